"""Reads a built TorchServe model archive (``.mar``, a zip file) by member name: the one place that opens one.

torch-model-archiver puts the manifest at ``MAR-INF/MANIFEST.json`` and ``--config-file``, ``--handler`` and
``--serialized-file`` at the root under their own names. Kept free of torch so that ``scripts/serve.py``
starts fast. ``make archive`` writes one (``scripts/make_archive.py``); training resumes from one.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import yaml

MANIFEST = "MAR-INF/MANIFEST.json"
PACKED_MODEL_CONFIG = "model-config.yaml"  # what make_archive packs its --model-config as, whatever its name


class ArchiveReadError(ValueError):
    """The file is not a readable zip archive, or lacks the member asked for."""


def member_names(archive: Path) -> list[str]:
    """The names of every member of ``archive``.

    Raises:
        ArchiveReadError: ``archive`` is missing or not a zip file.
    """
    try:
        with zipfile.ZipFile(archive) as packed:
            return packed.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise ArchiveReadError(f"cannot read {archive}: {exc}") from None


def read_member(archive: Path, name: str) -> bytes:
    """The bytes of the member ``name`` of ``archive``.

    Raises:
        ArchiveReadError: ``archive`` is missing or not a zip file, or has no member ``name``.
    """
    try:
        with zipfile.ZipFile(archive) as packed:
            return packed.read(name)
    except KeyError:
        raise ArchiveReadError(f"{archive} has no {name}") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise ArchiveReadError(f"cannot read {archive}: {exc}") from None


def packed_model_config(archive: Path) -> dict[str, Any]:
    """The model config packed in ``archive`` (an empty file reads as no settings).

    Raises:
        ArchiveReadError: the archive or its model config cannot be read.
    """
    try:
        return yaml.safe_load(read_member(archive, PACKED_MODEL_CONFIG)) or {}
    except yaml.YAMLError as exc:
        raise ArchiveReadError(f"{archive}: {PACKED_MODEL_CONFIG} is not YAML: {exc}") from None


def extract_serialized_file(archive: Path, folder: Path) -> Path:
    """Writes the archive's checkpoint (its manifest's ``serializedFile``) into ``folder``; returns its path.

    Raises:
        ArchiveReadError: the archive, its manifest or the checkpoint it names cannot be read.
    """
    manifest = read_member(archive, MANIFEST)
    try:
        name = json.loads(manifest)["model"]["serializedFile"]
        with zipfile.ZipFile(archive) as packed:
            return Path(packed.extract(name, folder))
    except (ValueError, KeyError, TypeError):
        raise ArchiveReadError(f"{archive}: {MANIFEST} names no packed serializedFile") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise ArchiveReadError(f"cannot extract the checkpoint of {archive}: {exc}") from None
