"""The one checkpoint format, written by training and read by training, evaluation and the handler.

An ``Epoch.N.pth`` file is a dict:
``{model, optimizer, lr_scheduler, scaler, epoch, model_config, class_names, args}`` (``scaler``, the AMP
GradScaler's state, is None without mixed precision and absent from older files). ``model_config`` and
``class_names`` alone rebuild the model, so the handler needs no other file. Everything in it is a tensor
or a plain Python value, so it loads with ``torch.load(..., weights_only=True)``; files in torch's legacy
(non-zip) format load too.
"""

from __future__ import annotations

import os
import pickle
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
# torch.save(..., _use_new_zipfile_serialization=False) writes pickles, torch's magic number first: these are the
# first bytes of such a file for each pickle protocol it may have been given.
_LEGACY_STARTS = tuple(pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=protocol)
                       for protocol in range(pickle.HIGHEST_PROTOCOL + 1))


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


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", *, mmap: bool = False,
    shown_as: str | os.PathLike | None = None,
) -> dict:
    """Reads a checkpoint safely (``weights_only=True``) and checks its shape.

    Args:
        mmap: map the tensors from the file instead of reading them into memory (for copying big files); a
            file in torch's legacy format is read all the same.
        shown_as: the file the messages name (default: ``path``), for ``path`` a private copy of it.

    Raises:
        CheckpointError: missing file, not a torch file, or not one of this project's checkpoints.
    """
    path = Path(path)
    shown = path if shown_as is None else shown_as
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {shown}")
    # torch.save writes a zip archive, or its legacy format; torch.load's own errors for other files (a text
    # file, an image) are misleading ("list index out of range", advice to re-save with the zip format).
    zipped = zipfile.is_zipfile(path)
    with path.open("rb") as file:
        start = file.read(max(map(len, _LEGACY_STARTS)))
    if not zipped and not start.startswith(_LEGACY_STARTS):
        raise CheckpointError(
            f"cannot read checkpoint {shown}: the file is cut short or damaged (its zip archive has no end)"
            if start.startswith(_ZIP_START) else
            f"{shown} is not a PyTorch checkpoint (torch.save writes a zip archive, or its legacy format; this is "
            "neither)"
        )
    try:
        # torch maps zip archives only: a legacy file is read whole.
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and zipped)
    except Exception as exc:  # torch raises many kinds (pickle, zip, EOF) for a damaged file
        raise CheckpointError(f"cannot read checkpoint {shown}: {_load_failure(exc)}") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(
            f"{shown} is not a tagger checkpoint (needs the keys {', '.join(REQUIRED_KEYS)})"
        )
    names = state["class_names"]
    if not isinstance(state["model_config"], dict) or not (
        isinstance(names, list) and all(isinstance(name, str) for name in names)
    ):
        raise CheckpointError(
            f"{shown} is not a tagger checkpoint (model_config must be a dict, class_names a list of names)"
        )
    expected = len(state["class_names"]) + 1
    if state["model_config"].get("num_classes") != expected:
        raise CheckpointError(
            f"{shown}: model has {state['model_config'].get('num_classes')} classes but "
            f"{len(state['class_names'])} class names (+1 background)"
        )
    return state


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
