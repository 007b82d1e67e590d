"""The model in each runtime a CPU worker offers (``handler.cpu_runtime``), beside the machine's own peak: the
``precision`` part of ``make bench`` (``python -m benchmarks.bench --parts precision`` alone).

- peak: GFLOP/s of a large matrix product in float32 and in bfloat16 at the worker's threads (all cores), the
  most these cores reach (their nominal clock understates them).
- FLOPs per image: the model's convolutions and matrix products on the bench's images (after its own resize),
  counted by ``torch.utils.flop_counter``.
- each runtime (PyTorch float32 and bfloat16, ONNX Runtime float32 where installed): ms per image of the model
  core (``Tagger.detect``, one image per call, all cores) and the GFLOP/s that makes, with whether this CPU
  computes it natively (``handler/precision.py``).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from handler.decode import ModelImage
from handler.precision import native_bfloat16, onnxruntime_installed
from handler.tagging import Tagger

RUNTIMES = ("float32", "bfloat16", "onnxruntime")
PEAK_OF = {"float32": "float32", "bfloat16": "bfloat16", "onnxruntime": "float32"}  # the peak a runtime is held to
MATMUL_SIZE = 2048


@dataclass(frozen=True)
class RuntimeCost:
    """The model core in one runtime: ``ms_per_image`` over ``images`` calls of one image each."""

    runtime: str
    native: bool
    ms_per_image: float
    images: int
    flops_per_image: float

    @property
    def gflops_per_second(self) -> float:
        return self.flops_per_image / self.ms_per_image / 1e6

    def row(self, *, float32_ms: float, peak: float) -> str:
        support = "native" if self.native else "emulated"
        return (f"  {self.runtime:<11} {support:<9} {self.ms_per_image:9.1f} {self.ms_per_image / float32_ms:7.2f} "
                f"{self.gflops_per_second:8.1f} {100 * self.gflops_per_second / peak:6.0f}%")


def matmul_peak(dtype: torch.dtype, *, size: int = MATMUL_SIZE, repeats: int = 5) -> float:
    """GFLOP/s of a ``size`` x ``size`` matrix product in ``dtype``, the best of ``repeats`` (each ~2 size^3)."""
    left, right = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(left, right)  # one-off costs before the clock
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(left, right)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def model_flops(tagger: Tagger, images: list[ModelImage]) -> float:
    """Mean FLOPs per image of the model's convolutions and matrix products (float32; autocast runs the same)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        tagger.detect(images)
    return counter.get_total_flops() / len(images)


def measure_runtime(checkpoint: Path, images: list[ModelImage], *, runtime: str, seconds: float,
                    flops_per_image: float) -> RuntimeCost:
    """One image per call, cycling through ``images`` for ``seconds`` (at least two calls: emulated bfloat16 on
    a CPU without it takes tens of times float32's time)."""
    tagger = Tagger.from_checkpoint(checkpoint, cpu_runtime=runtime)
    tagger.detect(images[:1])  # one-off costs (allocator, kernels) before the clock runs
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 2 or time.perf_counter() - started < seconds:
        image = images[len(times) % len(images)]
        call = time.perf_counter()
        tagger.detect([image])
        times.append(time.perf_counter() - call)
    return RuntimeCost(runtime=runtime, native=runtime != "bfloat16" or native_bfloat16(),
                         ms_per_image=1000 * statistics.fmean(times), images=len(times),
                         flops_per_image=flops_per_image)


def precision_report(checkpoint: Path, jpegs: list[bytes], *, seconds: float) -> tuple[list[str], list[RuntimeCost]]:
    """The lines of the precision part and the cost of each runtime (float32 first; ONNX Runtime where
    installed)."""
    tagger = Tagger.from_checkpoint(checkpoint)
    images = [tagger.load_image(data) for data in jpegs]
    flops = model_flops(tagger, images)
    # Emulated bfloat16 multiplies at well under 1 GFLOP/s: a smaller product measures it in seconds, not minutes.
    peaks = {"float32": matmul_peak(torch.float32),
             "bfloat16": matmul_peak(torch.bfloat16, size=MATMUL_SIZE if native_bfloat16() else MATMUL_SIZE // 4)}
    runtimes = [name for name in RUNTIMES if name != "onnxruntime" or onnxruntime_installed()]
    costs = [measure_runtime(checkpoint, images, runtime=name, seconds=seconds, flops_per_image=flops)
             for name in runtimes]
    lines = [f"model: {flops / 1e9:.2f} GFLOP per image (mean of {len(images)} images after the model's resize); "
             f"peak of this CPU at {torch.get_num_threads()} threads (square matrix products): "
             + ", ".join(f"{name} {value:.1f} GFLOP/s" for name, value in peaks.items()),
             f"  {'runtime':<11} {'CPU':<9} {'ms/image':>9} {'ratio':>7} {'GFLOP/s':>8} {'of peak':>7}"]
    lines += [cost.row(float32_ms=costs[0].ms_per_image, peak=peaks[PEAK_OF[cost.runtime]]) for cost in costs]
    return lines, costs
