"""How a worker runs the model: in reduced precision (float16 on a GPU, bfloat16 on a CPU that computes it
natively) or in float32, by PyTorch or, on a CPU, by ONNX Runtime (``handler/onnx_runtime.py``).

One definition of reduced precision for serving (``Tagger``), training (``training/mixed_precision.py``) and
the benchmarks: the model
runs under ``torch.autocast`` with the reduced type, so its convolutions and linear layers compute in it, while
the hooks of ``handler/detector.py`` hand the feature maps, the RPN head's and the box predictor's outputs on in
float32, so anchors, proposals, box decoding, NMS and the scaling back to the photo stay in float32.

bfloat16 pays only where the CPU has bfloat16 instructions (AVX-512 BF16 on AMD Zen 4 and Intel Cooper Lake and
later, AMX on Intel Sapphire Rapids and later, BF16 on Arm v8.6+ such as AWS Graviton 3): there the demo model
took 0.57x of float32's time. Without them PyTorch emulates it, 34x slower on an AVX2 AMD EPYC, where ONNX
Runtime's float32 took 0.68x of PyTorch's (README: "CPU runtime"). ``auto`` therefore chooses from the CPU the
worker runs on: bfloat16 where the CPU has it, else ONNX Runtime where it is installed, else PyTorch float32.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that use it: `make serve` (scripts/serve.py) describes the precision
# without paying torch's import.

# float32 and bfloat16: PyTorch (bfloat16 under autocast); onnxruntime: ONNX Runtime in float32.
CPU_RUNTIMES = ("auto", "float32", "bfloat16", "onnxruntime")
# /proc/cpuinfo flags (x86: "flags", Arm: "Features") of native bfloat16 arithmetic.
NATIVE_BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
CPUINFO = Path("/proc/cpuinfo")
# ``auto`` hands a model to ONNX Runtime up to this many parameters (the demo model has 2.4 M, VGG16 138 M): the
# exported graph is held beside PyTorch's weights, twice the memory, and one graph is capped at 2 GB.
ONNX_AUTO_MAX_PARAMETERS = 50_000_000


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


def onnxruntime_installed() -> bool:
    """Whether ONNX Runtime and the ONNX package (the export writes its format) can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def resolve_cpu_runtime(setting: str, *, flags: frozenset[str] | None = None, onnxruntime: bool | None = None,
                        parameters: int | None = None) -> str:
    """``float32``, ``bfloat16`` or ``onnxruntime`` for a CPU worker; ``auto`` is bfloat16 where the CPU has it
    natively, else onnxruntime where it is installed (``onnxruntime``: ``onnxruntime_installed()`` when None) and
    the model has at most ``ONNX_AUTO_MAX_PARAMETERS`` (``parameters``: None when not known), else float32.

    Raises:
        ValueError: ``setting`` is not one of ``CPU_RUNTIMES``.
    """
    if setting not in CPU_RUNTIMES:
        raise ValueError(f"cpu_runtime must be one of {', '.join(CPU_RUNTIMES)}, got {setting!r}")
    if setting != "auto":
        return setting
    if native_bfloat16(flags):
        return "bfloat16"
    installed = onnxruntime_installed() if onnxruntime is None else onnxruntime
    small = parameters is None or parameters <= ONNX_AUTO_MAX_PARAMETERS
    return "onnxruntime" if installed and small else "float32"


def describe_cpu_runtime(setting: str, *, flags: frozenset[str] | None = None,
                         onnxruntime: bool | None = None) -> str:
    """One line for ``make serve``: how a CPU worker runs the model, and why."""
    flags = cpu_flags() if flags is None else flags
    resolved = resolve_cpu_runtime(setting, flags=flags, onnxruntime=onnxruntime)
    names = {"float32": "float32 (PyTorch)", "bfloat16": "bfloat16 (PyTorch autocast)",
             "onnxruntime": "float32 (ONNX Runtime)"}
    if setting != "auto":
        return f"{names[resolved]}, handler.cpu_runtime: {setting}"
    found = sorted(NATIVE_BFLOAT16_FLAGS & flags)
    if found:
        return f"{names[resolved]}, auto: this CPU computes bfloat16 natively ({', '.join(found)})"
    if resolved == "onnxruntime":
        return (f"float32 (ONNX Runtime; PyTorch for models over {ONNX_AUTO_MAX_PARAMETERS // 1_000_000} M "
                f"parameters), auto: this CPU has no native bfloat16 (PyTorch would emulate it, far slower)")
    return (f"{names[resolved]}, auto: this CPU has no native bfloat16 (PyTorch would emulate it, far slower), "
            f"and ONNX Runtime is not installed")


def autocast_dtype(device_type: str, *, half_precision: bool = False,
                   cpu_runtime: str = "float32") -> torch.dtype | None:
    """The reduced type PyTorch runs the model in on ``device_type`` ("cuda" or "cpu"), or None for float32.

    Args:
        half_precision: float16 on a GPU (ignored on a CPU).
        cpu_runtime: one of ``CPU_RUNTIMES`` (ignored on a GPU).
    """
    import torch

    if device_type == "cuda":
        return torch.float16 if half_precision else None
    return torch.bfloat16 if resolve_cpu_runtime(cpu_runtime) == "bfloat16" else None


def reduced_precision(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device_type``; a no-op context when ``dtype`` is None."""
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)
