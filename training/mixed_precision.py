"""Mixed-precision training as torchvision's detection references do it: float16 autocast around the forward
pass and a GradScaler around the backward pass, on CUDA only. On a CPU both are off: a plain float32 step.

Apart from engine.py (which needs pycocotools and tqdm) so that benchmarks/gpu_check.py takes the same step
on a bare GPU machine. The model keeps its coordinates in float32 under autocast (see handler/detector.py).
"""

from __future__ import annotations

import contextlib

import torch

from handler.precision import reduced_precision


def grad_scaler(device: torch.device, *, enabled: bool = True) -> torch.amp.GradScaler | None:
    """A GradScaler, which turns mixed precision on, for a CUDA device; None elsewhere or when not ``enabled``."""
    return torch.amp.GradScaler("cuda") if enabled and device.type == "cuda" else None


def autocast(device: torch.device, scaler: torch.amp.GradScaler | None) -> contextlib.AbstractContextManager:
    """float16 autocast for the forward pass when there is a ``scaler``; a no-op context otherwise."""
    return reduced_precision(device.type, torch.float16 if scaler is not None else None)


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler | None) -> None:
    """Gradients of ``loss`` (scaled when there is a ``scaler``) and one optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)  # skipped when the scaled gradients overflowed; the scale then shrinks
    scaler.update()
