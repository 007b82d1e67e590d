"""The one checkpoint format, read by the handler, training and evaluation (``training/checkpoints.py`` writes it).

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
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torchvision.models.detection import FasterRCNN

from .detector import build_detector_from_config
from .text import error_line

REQUIRED_KEYS = ("model", "epoch", "model_config", "class_names")
_ZIP_START = b"PK\x03\x04"  # the first bytes of a zip archive (its first local file header)
# torch.save(..., _use_new_zipfile_serialization=False) writes pickles, torch's magic number first: these are the
# first bytes of such a file for each pickle protocol it may have been given.
_LEGACY_STARTS = tuple(pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=protocol)
                       for protocol in range(pickle.HIGHEST_PROTOCOL + 1))


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint of this project."""


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


def model_from_checkpoint(state: Mapping[str, Any]) -> FasterRCNN:
    """Rebuilds the model from the checkpoint's own config and loads its weights (in train mode)."""
    model = build_detector_from_config(state["model_config"])
    model.load_state_dict(state["model"])
    return model


def _load_failure(exc: Exception) -> str:
    """One line on why torch.load failed (torch's own weights-only message is several paragraphs)."""
    if "Weights only load failed" in str(exc):
        return "it holds Python objects, not only tensors and plain values (e.g. a whole pickled model)"
    return error_line(exc, with_type=True)
