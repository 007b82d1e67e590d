"""What runs in reduced precision: float16 on a GPU, bfloat16 on a CPU that computes it natively.

One definition for serving (``Tagger``), training (``training/mixed_precision.py``) and the benchmarks: the model
runs under ``torch.autocast`` with the reduced type, so its convolutions and linear layers compute in it, while
the hooks of ``handler/detector.py`` hand the feature maps, the RPN head's and the box predictor's outputs on in
float32, so anchors, proposals, box decoding, NMS and the scaling back to the photo stay in float32.

bfloat16 pays only where the CPU has bfloat16 instructions (AVX-512 BF16 on AMD Zen 4 and Intel Cooper Lake and
later, AMX on Intel Sapphire Rapids and later, BF16 on Arm v8.6+ such as AWS Graviton 3): there the demo model
took 0.57x of float32's time. Without them PyTorch emulates it, 34x slower on an AVX2 AMD EPYC (README: "CPU
precision"). ``auto`` therefore chooses from the CPU the worker runs on.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that use it: `make serve` (scripts/serve.py) describes the precision
# without paying torch's import.

CPU_PRECISIONS = ("auto", "float32", "bfloat16")
# /proc/cpuinfo flags (x86: "flags", Arm: "Features") of native bfloat16 arithmetic.
NATIVE_BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The first processor's feature flags; empty where /proc/cpuinfo cannot be read (macOS, Windows)."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return frozenset()
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bfloat16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes bfloat16 itself (``flags``: ``cpu_flags()`` when None)."""
    return bool(NATIVE_BFLOAT16_FLAGS & (cpu_flags() if flags is None else flags))


def resolve_cpu_precision(setting: str, *, flags: frozenset[str] | None = None) -> str:
    """``float32`` or ``bfloat16`` for a CPU worker: ``auto`` is bfloat16 where the CPU has it natively.

    Raises:
        ValueError: ``setting`` is not one of ``CPU_PRECISIONS``.
    """
    if setting not in CPU_PRECISIONS:
        raise ValueError(f"cpu_precision must be one of {', '.join(CPU_PRECISIONS)}, got {setting!r}")
    if setting != "auto":
        return setting
    return "bfloat16" if native_bfloat16(flags) else "float32"


def describe_cpu_precision(setting: str, *, flags: frozenset[str] | None = None) -> str:
    """One line for ``make serve``: the precision a CPU worker runs in, and why."""
    resolved = resolve_cpu_precision(setting, flags=flags)
    found = sorted(NATIVE_BFLOAT16_FLAGS & (cpu_flags() if flags is None else flags))
    if setting != "auto":
        return f"{resolved} (handler.cpu_precision: {setting})"
    if found:
        return f"{resolved} (auto: this CPU computes bfloat16 natively: {', '.join(found)})"
    return f"{resolved} (auto: this CPU has no native bfloat16, which would be emulated and far slower)"


def autocast_dtype(device_type: str, *, half_precision: bool = False,
                   cpu_precision: str = "float32") -> torch.dtype | None:
    """The reduced type the model runs in on ``device_type`` ("cuda" or "cpu"), or None for float32.

    Args:
        half_precision: float16 on a GPU (ignored on a CPU).
        cpu_precision: one of ``CPU_PRECISIONS`` (ignored on a GPU).
    """
    import torch

    if device_type == "cuda":
        return torch.float16 if half_precision else None
    return torch.bfloat16 if resolve_cpu_precision(cpu_precision) == "bfloat16" else None


def reduced_precision(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device_type``; a no-op context when ``dtype`` is None."""
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)
