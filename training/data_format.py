"""What a data format module (``training/formats/``) gives the rest of training, and the helpers they share.

A format module defines ``FORMAT``, a ``DataFormat``: its finders, each recognising one of its layouts in a
folder from folder and file names and returning a ``Source`` (the files of one split); and, for formats that
can be given as a single file, a ``DataFile``. A ``Source`` reads its files into ``Annotations``: every image it
names as an ``AnnotatedImage``, in the standard form that ``training/datasets.py`` checks, splits and turns into
tensors (as detectron2's dataset functions return standard dicts). ``training/layouts.py`` registers every
module of ``training/formats/`` under the module's name.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

# Names of the image files a data set folder is searched for (handler/decode.py decodes them by content); .hif is
# the HEIF name of Canon and Fujifilm cameras.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".ico",
                    ".heic", ".heif", ".hif", ".avif")
# The names each split goes by in exports (Roboflow writes valid/).
SPLIT_ALIASES = {"val": ("val", "valid", "validation"), "test": ("test", "testing"), "train": ("train", "training")}
IMAGE_FOLDERS = ("images", "image", "jpegimages", "imgs", "img")


class DatasetError(ValueError):
    """A data set that cannot be used at all; the message is one line for the user."""


@dataclass
class AnnotatedObject:
    """One object as its annotation gives it.

    Attributes:
        box: x1 y1 x2 y2, in pixels (or in fractions of the image when the image's ``relative_boxes``); None when
            zero-size or inverted.
    """

    name: str
    box: tuple[float, float, float, float] | None
    difficult: bool


@dataclass
class AnnotatedImage:
    """One image as its annotation describes it, before it is checked against the image file.

    Attributes:
        name: how messages name the image.
        image_path: the image file; None when the annotation names none.
        image_id: the number its target carries (see ``training/datasets.py``).
        width / height: as annotated (0 when unreadable), checked against the image file; None for formats
            that record no size.
        relative_boxes: boxes in fractions of the image (YOLO), scaled by its real size.
        malformed_objects: objects the format could not read (no box, no class), counted and skipped.
        unknown_category_objects: objects of a category the file does not define (COCO), counted and skipped.
        unlabelled: no label file (YOLO); the image is kept as a negative and counted.
        broken_annotation: why the annotation cannot be read ("a.xml (missing)"); the image is then skipped.
    """

    name: str
    image_path: Path | None
    image_id: int
    width: int | None = None
    height: int | None = None
    objects: list[AnnotatedObject] = field(default_factory=list)
    relative_boxes: bool = False
    malformed_objects: int = 0
    unknown_category_objects: int = 0
    unlabelled: bool = False
    broken_annotation: str | None = None


@dataclass
class Annotations:
    """What a ``Source`` reads: every image it names, in order, and what holds for all of them.

    Attributes:
        class_names: the data's class names in label order; empty when the data names none.
        description: names the data set and split in messages.
        orphan_annotations: annotations of no image of the file, counted in every split's warning.
        unused_supercategories: categories left out of the classes (COCO), named in every split's warning.
    """

    images: list[AnnotatedImage]
    class_names: list[str]
    description: str
    orphan_annotations: int = 0
    unused_supercategories: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class Source(ABC):
    """The files of one split of a data set, as a format's finder names them.

    Attributes:
        layout: what was found, for reports.
        description: names the data set and split in messages.
        hash_split: the part of the images read that ``training/datasets.py`` takes by its content split:
            the split asked for, for a layout without splits of its own; "all" when the files are the split's.
    """

    layout: str
    description: str
    hash_split: str

    @abstractmethod
    def read(self, class_names: Sequence[str] | None) -> Annotations:
        """Reads every image the source names (all of them: the split by content comes after).

        Args:
            class_names: the class list asked for, for formats whose labels are numbers (YOLO) without names.
        Raises:
            DatasetError: a file that cannot be used at all.
        """

    def in_split_folder(self, root: Path, split: str) -> Source:
        """This source, found inside ``root``'s folder of ``split`` (``train/``, ``valid/``, ...)."""
        return replace(self, layout=f"{self.layout} in split folders", description=f"{root} [{split}]")


@dataclass(frozen=True)
class Finder:
    """One layout of a format: ``find(folder, split)`` returns its source, None when the folder is not one, and
    raises ``DatasetError`` when it is one without ``split``.

    Attributes:
        rank: the order among every format's finders, lowest first: layouts that name their files exactly (a
            data.yaml, a VOCdevkit, per-split COCO files) rank 10-30, guesses from folder names 40-60.
    """

    rank: int
    find: Callable[[Path, str], Source | None]


@dataclass(frozen=True)
class DataFile:
    """A single file given as the data set (a COCO .json, a YOLO data.yaml).

    Attributes:
        suffixes: the file name endings, lower case.
        kind: how messages name such a file ("a COCO .json").
        open: ``open(path, split)`` returns its source.
    """

    suffixes: tuple[str, ...]
    kind: str
    open: Callable[[Path, str], Source]


@dataclass(frozen=True)
class DataFormat:
    """What a format module defines as ``FORMAT``; the module's name is the ``--format`` that picks it.

    Attributes:
        looked_for: its layouts, for the message about a folder that holds no known one.
        finders: its layouts inside a folder.
        data_file: the file that alone is a data set of this format, if any.
    """

    looked_for: str
    finders: tuple[Finder, ...]
    data_file: DataFile | None = None


# --- helpers the formats share ---------------------------------------------------------------------------------


def child_folder(root: Path, names: tuple[str, ...]) -> Path | None:
    """The first subfolder of ``root`` with one of ``names`` (any capitalisation), in the order of ``names``."""
    children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    return next((children[name] for name in names if name in children), None)


def image_folder(root: Path) -> Path:
    """Where a flat layout keeps its images: its image folder (``images/``, ...), else ``root`` itself."""
    return child_folder(root, IMAGE_FOLDERS) or root


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (at any depth), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def split_folders(root: Path) -> dict[str, Path]:
    """Split name -> folder, for the subfolders of ``root`` named like splits (train/, valid/, ...)."""
    children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    folders: dict[str, Path] = {}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            if alias in children:
                folders.setdefault(split, children[alias])
    return folders


def four_numbers(values) -> tuple[float, float, float, float]:
    """Raises TypeError or ValueError unless ``values`` are four finite numbers."""
    numbers = tuple(float(value) for value in values)
    if len(numbers) != 4 or not all(math.isfinite(number) for number in numbers):
        raise ValueError(f"not four finite numbers: {numbers}")
    return numbers


def int_or_zero(value) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 0
