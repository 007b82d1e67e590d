"""Writes the checkpoint format that ``handler/checkpoint.py`` reads, and finds a run's ``Epoch.N.pth`` files.

Training writes ``Epoch.N.pth`` after every epoch (``save_checkpoint``); ``make archive`` and ``make demo-model``
write the serving copy (``save_serving_checkpoint``). Both write atomically: a reader never meets half a file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from handler.checkpoint import REQUIRED_KEYS, load_checkpoint

_EPOCH_FILE = re.compile(r"^Epoch\.(\d+)\.pth$")


def checkpoint_name(epoch: int) -> str:
    return f"Epoch.{epoch}.pth"


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    model_config: Mapping[str, Any],
    class_names: list[str],
    epoch: int,
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
    args: Mapping[str, Any] | None = None,
) -> Path:
    """Writes a checkpoint atomically (a reader never sees half a file) and returns its path."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": int(epoch),
        "model_config": dict(model_config),
        "class_names": list(class_names),
        "args": {k: _plain_arg(v) for k, v in (args or {}).items()},
    }
    return _save_atomically(state, Path(path))


def save_serving_checkpoint(
    source: str | os.PathLike, output: str | os.PathLike, *, float16: bool = False,
    shown_as: str | os.PathLike | None = None,
) -> Path:
    """Writes the part of a checkpoint that serving reads: weights, model config, class names and epoch.

    The optimizer and scheduler state and the training arguments (data paths included) stay behind. The
    source is memory-mapped and tensors are converted one at a time, so memory holds at most the output.

    Args:
        float16: store floating-point weights in half precision (half the size); the model loads them
            into its float32 parameters.
        shown_as: the file the messages name (default: ``source``), as for ``load_checkpoint``.
    """
    state = load_checkpoint(source, mmap=True, shown_as=shown_as)
    weights = state["model"]
    for name, tensor in weights.items():
        if float16 and tensor.is_floating_point():
            weights[name] = tensor.half()
    serving = {key: state[key] for key in REQUIRED_KEYS}
    serving.update(optimizer=None, lr_scheduler=None, scaler=None, args={})
    return _save_atomically(serving, Path(output))


def epoch_checkpoints(folder: str | os.PathLike) -> dict[int, Path]:
    """The ``Epoch.N.pth`` files in ``folder`` by N."""
    return {int(m.group(1)): p for p in Path(folder).glob("Epoch.*.pth") if (m := _EPOCH_FILE.match(p.name))}


def newest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The ``Epoch.N.pth`` in ``folder`` with the largest N, or None."""
    found = epoch_checkpoints(folder)
    return found[max(found)] if found else None


def _save_atomically(state: dict, path: Path) -> Path:
    """torch.save through a temporary file beside ``path`` that takes its name only once it is on disk: a reader,
    or a crash, never meets half a checkpoint, and a failed save (a full disk) leaves no temporary file behind.

    Raises:
        whatever the write raised (OSError, or torch's RuntimeError), after the temporary file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())  # the bytes reach the disk before the name does
        os.replace(tmp, path)
    except BaseException:  # an interrupted run (Ctrl-C) leaves no temporary file either
        tmp.unlink(missing_ok=True)
        raise
    return path


def _plain_arg(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {k: _plain_arg(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_arg(v) for v in value]
    return value
