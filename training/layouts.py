"""Finds where a detection data set keeps its images and annotations, in the layouts labelling tools export.

Every module of ``training/formats/`` is a data format, registered here under its module's name (the
``--format`` that picks it) with its ``FORMAT`` (see ``training/data_format.py``). ``find_layout(path, split)``
tries the finders of every format in the order of their rank, looking at folder and file names only (no
annotation is parsed, except a YOLO ``data.yaml``): a YOLO data.yaml, a VOCdevkit, COCO
``annotations/instances_{split}.json``, flat Pascal VOC, YOLO ``images/`` + ``labels/`` or labels beside the
images, one COCO .json. Then the same inside split folders: ``train/``, ``valid/`` or ``val/``, ``test/``
(Roboflow's exports). It returns the ``Source`` naming the files of that split; ``training/datasets.py``
reads it.

A layout without splits of its own names all its files, and its source's ``hash_split`` is the split asked
for: ``training/datasets.py`` takes that part of the images by their content (``split_by_content``). Layouts
with splits name the split's files, with ``hash_split`` "all".
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from training import formats
from training.data_format import DataFormat, DatasetError, Source, split_folders


def _registered_formats() -> dict[str, DataFormat]:
    """Each module of ``training/formats/`` by name: its ``FORMAT``."""
    return {module.name: importlib.import_module(f"{formats.__name__}.{module.name}").FORMAT
            for module in sorted(pkgutil.iter_modules(formats.__path__), key=lambda module: module.name)}


REGISTERED = _registered_formats()
FORMATS = tuple(REGISTERED)


def find_layout(path: str | Path, split: str = "train", *, format: str | None = None) -> Source:
    """Recognises the layout of the data set at ``path`` and names the files of ``split`` (for data without
    splits of its own: all its files, and the split for ``datasets.split_by_content`` to take from them).

    Args:
        path: a data set folder, or a file that a format reads alone (a COCO .json, a YOLO data.yaml).
        split: "train", "val", "test", "all", or a split name the data defines (e.g. VOC's "trainval").
        format: one of ``FORMATS`` to consider only that format's layouts; None guesses.

    Raises:
        DatasetError: missing path, no known layout (the message lists what was looked for), unknown split
            (for data without splits, ``split_by_content`` refuses it when the data set is read).
    """
    path = Path(path)
    if format is not None and format not in REGISTERED:
        raise DatasetError(f"unknown data set format {format!r}; choose one of: {', '.join(FORMATS)}")
    if not path.exists():
        raise DatasetError(f"data set not found: {path}")
    chosen = [REGISTERED[format]] if format else list(REGISTERED.values())
    if path.is_file():
        return _open_file(path, split, chosen)
    source = _find_in_folder(path, split, chosen)
    if source is None:
        source = _find_in_split_folder(path, split, chosen)
    if source is None:
        looked_for = "; ".join(data_format.looked_for for data_format in chosen)
        raise DatasetError(f"{path} is not a known data set layout{'' if format is None else f' for {format}'}: "
                           f"looked for {looked_for}, or train/ + val/ folders holding one of them"
                           + _layouts_below(path, chosen))
    return source


def _open_file(path: Path, split: str, chosen: list[DataFormat]) -> Source:
    for data_format in chosen:
        data_file = data_format.data_file
        if data_file is not None and path.suffix.lower() in data_file.suffixes:
            return data_file.open(path, split)
    kinds = " or ".join(f.data_file.kind for f in REGISTERED.values() if f.data_file is not None)
    raise DatasetError(f"{path} is not a data set: give a data set folder, {kinds}")


def _find_in_folder(root: Path, split: str, chosen: list[DataFormat]) -> Source | None:
    """The first layout of the ``chosen`` formats found directly in ``root``, or None."""
    for finder in sorted((finder for f in chosen for finder in f.finders), key=lambda finder: finder.rank):
        source = finder.find(root, split)
        if source is not None:
            return source
    return None


def _find_in_split_folder(root: Path, split: str, chosen: list[DataFormat]) -> Source | None:
    """A layout inside the split's own folder (``train/``, ``valid/``, ...), or None when there are none."""
    folders = split_folders(root)
    if not folders:
        return None
    if split not in folders:
        raise DatasetError(f"{root} has no split '{split}' (it has: {', '.join(sorted(folders))})")
    source = _find_in_folder(folders[split], "all", chosen)  # the folder is the split: every file of it
    return None if source is None else source.in_split_folder(root, split)


def _layouts_below(path: Path, chosen: list[DataFormat]) -> str:
    inner = []
    for child in sorted(p for p in path.iterdir() if p.is_dir()):
        try:
            if _find_in_folder(child, "all", chosen) is not None:
                inner.append(child.name)
        except DatasetError:
            inner.append(child.name)
    return f" (data sets found inside: {', '.join(inner)}; give one of them)" if inner else ""
