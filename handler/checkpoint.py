"""The one checkpoint format, written by training and read by training, evaluation and the handler.

An ``Epoch.N.pth`` file is a dict:
``{model, optimizer, lr_scheduler, scaler, epoch, model_config, class_names, args}`` (``scaler``, the AMP
GradScaler's state, is None without mixed precision and absent from older files). ``model_config`` and
``class_names`` alone rebuild the model, so the handler needs no other file. Everything in it is a tensor
or a plain Python value, so it loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torchvision.models.detection import FasterRCNN

from .detector import build_detector_from_config
from .text import error_line

REQUIRED_KEYS = ("model", "epoch", "model_config", "class_names")
_EPOCH_FILE = re.compile(r"^Epoch\.(\d+)\.pth$")
_ZIP_START = b"PK\x03\x04"  # the first bytes of a zip archive (its first local file header)


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint of this project."""


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


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *, mmap: bool = False) -> dict:
    """Reads a checkpoint safely (``weights_only=True``) and checks its shape.

    Args:
        mmap: map the tensors from the file instead of reading them into memory (for copying big files).

    Raises:
        CheckpointError: missing file, not a torch file, or not one of this project's checkpoints.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    # torch.save writes a zip archive; torch.load's own errors for other files (a text file, an image) are
    # misleading ("list index out of range", advice to re-save with the zip format).
    if not zipfile.is_zipfile(path):
        with path.open("rb") as file:
            cut_short = file.read(4) == _ZIP_START
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is cut short or damaged (its zip archive has no end)"
            if cut_short else f"{path} is not a PyTorch checkpoint (torch.save writes a zip archive; this is not one)"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises many kinds (pickle, zip, EOF) for a damaged file
        raise CheckpointError(f"cannot read checkpoint {path}: {_load_failure(exc)}") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(
            f"{path} is not a tagger checkpoint (needs the keys {', '.join(REQUIRED_KEYS)})"
        )
    names = state["class_names"]
    if not isinstance(state["model_config"], dict) or not (
        isinstance(names, list) and all(isinstance(name, str) for name in names)
    ):
        raise CheckpointError(
            f"{path} is not a tagger checkpoint (model_config must be a dict, class_names a list of names)"
        )
    expected = len(state["class_names"]) + 1
    if state["model_config"].get("num_classes") != expected:
        raise CheckpointError(
            f"{path}: model has {state['model_config'].get('num_classes')} classes but "
            f"{len(state['class_names'])} class names (+1 background)"
        )
    return state


def save_serving_checkpoint(source: str | os.PathLike, output: str | os.PathLike, *, float16: bool = False) -> Path:
    """Writes the part of a checkpoint that serving reads: weights, model config, class names and epoch.

    The optimizer and scheduler state and the training arguments (data paths included) stay behind. The
    source is memory-mapped and tensors are converted one at a time, so memory holds at most the output.

    Args:
        float16: store floating-point weights in half precision (half the size); the model loads them
            into its float32 parameters.
    """
    state = load_checkpoint(source, mmap=True)
    weights = state["model"]
    for name, tensor in weights.items():
        if float16 and tensor.is_floating_point():
            weights[name] = tensor.half()
    serving = {key: state[key] for key in REQUIRED_KEYS}
    serving.update(optimizer=None, lr_scheduler=None, scaler=None, args={})
    return _save_atomically(serving, Path(output))


def model_from_checkpoint(state: Mapping[str, Any]) -> FasterRCNN:
    """Rebuilds the model from the checkpoint's own config and loads its weights (in train mode)."""
    model = build_detector_from_config(state["model_config"])
    model.load_state_dict(state["model"])
    return model


def epoch_checkpoints(folder: str | os.PathLike) -> dict[int, Path]:
    """The ``Epoch.N.pth`` files in ``folder`` by N."""
    return {int(m.group(1)): p for p in Path(folder).glob("Epoch.*.pth") if (m := _EPOCH_FILE.match(p.name))}


def newest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The ``Epoch.N.pth`` in ``folder`` with the largest N, or None."""
    found = epoch_checkpoints(folder)
    return found[max(found)] if found else None


def _save_atomically(state: dict, path: Path) -> Path:
    """torch.save through a temporary file, so a reader never sees half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def _load_failure(exc: Exception) -> str:
    """One line on why torch.load failed (torch's own weights-only message is several paragraphs)."""
    if "Weights only load failed" in str(exc):
        return "it holds Python objects, not only tensors and plain values (e.g. a whole pickled model)"
    return error_line(exc, with_type=True)


def _plain_arg(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {k: _plain_arg(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_arg(v) for v in value]
    return value
