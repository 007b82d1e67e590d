"""Detection data sets: the images and boxes of one split, ready for a torchvision detection model.

``open_dataset`` finds the data set's layout (``training/layouts.py``), has its format (``training/formats/``)
read every image it names as an ``AnnotatedImage``, takes the split's part of them (``split_by_content``, for
data without splits of its own), checks each against its image file and turns them into ``ImageRecord``s.

Every data set yields ``(image, target)``: ``image`` a float tensor [3, H, W] in 0..1, ``target`` a dict with
``boxes`` (float [N, 4], x1 y1 x2 y2 in pixels), ``labels`` (int64 [N], 1..K; label i+1 is ``class_names[i]``),
``difficult`` (bool [N]) and ``image_id`` (int: COCO's image id, or the image's position in the file when
some ids are texts; for VOC the position of the annotation file among the folder's sorted XML files, the
same in every split; for YOLO the image's position among the images its layout names: the split's where the
layout has splits, else all).

Annotations are parsed once, when the data set is built, and each image's header is read then too (its real
size, its readability); pixels are decoded lazily in ``__getitem__`` by ``handler.decode``'s file loader. It
shares serving's decoding: EXIF orientation applied, every mode made RGB, the format read from the content.
It does not share serving's resizing: serving shrinks an upload in 8 bits to the model's input size before
the model, while training decodes at full size and the model's transform resizes the float tensor.

Messy real-world images and boxes do not stop a run: what is repaired or dropped is counted in ONE
``DatasetWarning`` per data set. What stops it, with a one-line ``DatasetError``, is a data set that cannot
be matched or used at all: no usable image, a class list that does not cover the data, an unknown split, a
file that is not the annotation file it claims to be, and COCO image or category ids that are missing or
given twice. Conventions shared by the formats (each format's own are in its module):
- The image file is the truth for the size: annotation sizes of 0x0 or another size are replaced by the
  size read from the image header, and boxes are clipped to it; nothing is rescaled.
- Boxes of a photo with an EXIF orientation are taken to be drawn on the photo as viewers show it (turned
  upright), which is also the frame in which the service answers.
- ``difficult`` objects (COCO: ``iscrowd``) are left out when ``include_difficult`` is False (training) and
  kept, marked ``difficult=True``, when it is True (evaluation).
- Images without objects stay in the set as negatives.
"""

from __future__ import annotations

import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch.utils.data import Dataset

from handler.decode import ImageError, image_to_tensor, load_image_file, read_image_size
from handler.text import error_line
from training.data_format import AnnotatedImage, DatasetError, Source
from training.layouts import find_layout

Transforms = Callable[[torch.Tensor, dict], "tuple[torch.Tensor, dict]"]
HASH_SPLITS = ("train", "val", "test", "all")
# The content split of data without splits: about these percentages of the images are "val" and "test", the
# rest "train".
HASH_VAL_PERCENT = 10
HASH_TEST_PERCENT = 10

_NAMES_SHOWN = 5
_SIZE_NOTE = "(the annotation said 0x0 or another size)"
_READ_CHUNK = 1 << 20


class DatasetWarning(UserWarning):
    """What was repaired or dropped while reading a data set (one per data set)."""


@dataclass(frozen=True)
class ImageRecord:
    """One usable image with its final annotation (boxes in pixels of the upright image)."""

    path: Path
    image_id: int
    width: int
    height: int
    boxes: list[tuple[float, float, float, float]]
    labels: list[int]
    difficult: list[bool]


@dataclass(frozen=True)
class UnreadableImage:
    """An image whose pixels failed to decode when a batch was loaded: training goes on without it."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


@dataclass
class _Report:
    """Counts of what was repaired or dropped, turned into the one warning of a data set."""

    missing_images: list[str] = field(default_factory=list)
    unlabelled_images: int = 0
    unreadable_images: list[str] = field(default_factory=list)
    broken_annotations: list[str] = field(default_factory=list)
    malformed_objects: int = 0
    orphan_annotations: int = 0
    zero_size_boxes: int = 0
    clipped_boxes: int = 0
    outside_boxes: int = 0
    corrected_sizes: int = 0
    difficult_left_out: int = 0
    unused_supercategories: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [
            _listed(self.missing_images, "image file missing", "image files missing", "dropped"),
            _listed(self.unreadable_images, "image unreadable", "images unreadable", "dropped"),
            _listed(self.broken_annotations, "annotation unreadable", "annotations unreadable", "skipped"),
            _counted(self.unlabelled_images, "image without a label file kept as a negative",
                     "images without a label file kept as negatives"),
            _counted(self.malformed_objects, "malformed object skipped", "malformed objects skipped"),
            _counted(self.orphan_annotations, "annotation of an unknown image or category ignored",
                     "annotations of unknown images or categories ignored"),
            _counted(self.zero_size_boxes, "zero-size box dropped", "zero-size boxes dropped"),
            _counted(self.clipped_boxes, "box clipped to the image", "boxes clipped to the image"),
            _counted(self.outside_boxes, "box outside the image dropped", "boxes outside the image dropped"),
            _counted(self.corrected_sizes, f"image size taken from the image file {_SIZE_NOTE}",
                     f"image sizes taken from the image files {_SIZE_NOTE}"),
            _counted(self.difficult_left_out, "difficult/crowd object left out of training",
                     "difficult/crowd objects left out of training"),
            _listed(self.unused_supercategories, "category that no annotation uses",
                    "categories that no annotation uses", "the supercategory of the others, not a class"),
        ]
        return "; ".join(part for part in parts if part)


class DetectionDataset(Dataset):
    """Images and boxes ready for a torchvision detection model.

    Args:
        records: the usable images with their final boxes.
        class_names: ``class_names[i]`` names label i+1.
        transforms: called last as ``transforms(image, target)``, returning both.
        description: names the data set in messages.
        layout: what was found on disk, for reports.
    """

    def __init__(
        self, *, records: Sequence[ImageRecord], class_names: Sequence[str], transforms: Transforms | None = None,
        description: str = "data set", layout: str = "records given in code",
    ) -> None:
        self.records = list(records)
        self.class_names = list(class_names)
        self.transforms = transforms
        self.description = description
        self.layout = layout

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict] | UnreadableImage:
        """The image and its target, or an ``UnreadableImage`` that the batch leaves out (see collate_as_lists)."""
        record = self.records[index]
        try:
            image = image_to_tensor(load_image_file(record.path))
        except (ImageError, OSError) as exc:  # the header was fine when the set was built, the pixels are not
            return UnreadableImage(path=record.path, reason=error_line(exc))
        target = {
            "boxes": torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(record.labels, dtype=torch.int64),
            "difficult": torch.tensor(record.difficult, dtype=torch.bool),
            "image_id": record.image_id,
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def image_size(self, index: int) -> tuple[int, int]:
        """(width, height) of an image, known without decoding it (for aspect-ratio grouping)."""
        record = self.records[index]
        return record.width, record.height

    def image_path(self, index: int) -> Path:
        return self.records[index].path


def open_dataset(
    path: str | os.PathLike, split: str = "train", *, format: str | None = None,
    class_names: Sequence[str] | None = None, include_difficult: bool = False, transforms: Transforms | None = None,
) -> DetectionDataset:
    """Opens a detection data set in any layout of ``training/layouts.py``, recognised from what is on disk.

    Args:
        path: the data set folder, a COCO .json or a YOLO data.yaml.
        split: which part to read ("train", "val", "test", "all", ...).
        format: one of ``training.layouts.FORMATS`` to skip the guess; None guesses.
        class_names: fixes the label order (e.g. a checkpoint's); default: from the data.
        include_difficult: keep difficult/crowd objects, marked (evaluation), instead of leaving them out.
        transforms: called last on (image, target).

    Raises:
        DatasetError: missing path, unknown layout, empty split, class list not covering the data.
    """
    return read_dataset(find_layout(path, split, format=format), class_names=class_names,
                        include_difficult=include_difficult, transforms=transforms)


def read_dataset(
    source: Source, *, class_names: Sequence[str] | None = None, include_difficult: bool = False,
    transforms: Transforms | None = None,
) -> DetectionDataset:
    """Reads the images of a source's split, checked against their image files.

    Args:
        source: what ``find_layout`` (or a format's own function, e.g. ``formats.coco.coco_file``) found.
        class_names, include_difficult, transforms: as in ``open_dataset``.

    Raises:
        DatasetError: no usable image, class list not covering the split, unknown split of data without splits.
    """
    annotations = source.read(class_names)
    images = split_by_content(annotations.images, source.hash_split)
    report = _Report(orphan_annotations=annotations.orphan_annotations,
                     unused_supercategories=annotations.unused_supercategories)
    names = _resolve_class_names(annotations.class_names, class_names, images, annotations.description)
    records = _build_records(images, names, include_difficult, report)
    summary = report.summary()
    if not records:
        raise DatasetError(f"{annotations.description}: no usable images" + (f" ({summary})" if summary else ""))
    if summary:
        warnings.warn(f"{annotations.description}: {summary}", DatasetWarning, stacklevel=2)
    return DetectionDataset(records=records, class_names=names, transforms=transforms,
                            description=annotations.description, layout=source.layout)


def split_by_content(images: Sequence[AnnotatedImage], split: str) -> list[AnnotatedImage]:
    """The images of ``split`` of a data set without splits of its own, in their order.

    A stable hash (CRC-32) of each image file's bytes (``content_split``) puts about ``HASH_VAL_PERCENT`` % of
    the images into "val", ``HASH_TEST_PERCENT`` % into "test" and the rest into "train"; "all" is everything.
    The three are disjoint, and byte-identical files (one photo exported twice under two names) land in the
    same split, so no photo is both trained on and scored. An image lands in the same split in every layout,
    under any file name, on every machine. Each split's reading hashes every image's bytes once.

    Raises:
        DatasetError: for a split other than train, val, test and all.
    """
    if split not in HASH_SPLITS:
        raise DatasetError(f"a data set without splits has no split '{split}' (it has: {', '.join(HASH_SPLITS)})")
    if split == "all":
        return list(images)
    return [image for image in images if content_split(image.image_path, image.name) == split]


def content_split(path: Path | None, name: str) -> str:
    """"train", "val" or "test": the split of the image file at ``path``, or of ``name`` when there is no
    readable file (the image is then dropped, and reported in that split)."""
    bucket = _content_crc(path, name) % 100
    if bucket < HASH_VAL_PERCENT:
        return "val"
    return "test" if bucket < HASH_VAL_PERCENT + HASH_TEST_PERCENT else "train"


def _content_crc(path: Path | None, name: str) -> int:
    if path is not None and path.is_file():
        try:
            with open(path, "rb") as file:
                crc = 0
                while chunk := file.read(_READ_CHUNK):
                    crc = zlib.crc32(chunk, crc)
                return crc
        except OSError:
            pass  # placed by its name; reading its header fails again, and that is reported
    return zlib.crc32(name.encode("utf-8"))


def _resolve_class_names(
    data_names: list[str], requested: Sequence[str] | None, images: Iterable[AnnotatedImage], description: str,
) -> list[str]:
    """The data's class names, or the requested list after checking it covers every object of the split."""
    if requested is None:
        if not data_names:
            raise DatasetError(f"{description}: no object classes found in the annotations (give class names)")
        return data_names
    names = [str(name).strip() for name in requested]
    if not names or "" in names or len(set(names)) != len(names):
        raise DatasetError(f"class names must be distinct and non-empty: {', '.join(names) or '(none)'}")
    uncovered = sorted({o.name for image in images for o in image.objects} - set(names))
    if uncovered:
        raise DatasetError(
            f"{description} has objects of classes not in the class list: {', '.join(uncovered)} "
            f"(class list: {', '.join(names)})"
        )
    return names


def _build_records(
    images: Iterable[AnnotatedImage], class_names: list[str], include_difficult: bool, report: _Report,
) -> list[ImageRecord]:
    """Checks each image against its file and turns its objects into final boxes and labels."""
    label_of = {name: number + 1 for number, name in enumerate(class_names)}
    records = []
    for image in images:
        report.unlabelled_images += image.unlabelled
        report.orphan_annotations += image.unknown_category_objects
        if image.broken_annotation is not None:
            report.broken_annotations.append(image.broken_annotation)
            continue
        if image.image_path is None or not image.image_path.is_file():
            report.missing_images.append(image.name)
            continue
        try:
            width, height = read_image_size(image.image_path)
        except (ImageError, OSError) as exc:
            report.unreadable_images.append(f"{image.name} ({getattr(exc, 'error', type(exc).__name__)})")
            continue
        report.malformed_objects += image.malformed_objects
        if image.width is not None and (image.width, image.height) != (width, height):
            report.corrected_sizes += 1
        boxes, labels, difficult = [], [], []
        for obj in image.objects:
            if obj.box is None:
                report.zero_size_boxes += 1
                continue
            x1, y1, x2, y2 = obj.box
            if image.relative_boxes:  # rounded so that an edge written as 1.0000001 is not "clipped"
                x1, y1, x2, y2 = (round(x1 * width, 3), round(y1 * height, 3), round(x2 * width, 3),
                                  round(y2 * height, 3))
            clipped = (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
                       min(max(x2, 0.0), width), min(max(y2, 0.0), height))
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                report.outside_boxes += 1
                continue
            if obj.difficult and not include_difficult:
                report.difficult_left_out += 1
                continue
            if clipped != (x1, y1, x2, y2):
                report.clipped_boxes += 1
            boxes.append(clipped)
            labels.append(label_of[obj.name])
            difficult.append(obj.difficult)
        records.append(ImageRecord(path=image.image_path, image_id=image.image_id, width=width, height=height,
                                   boxes=boxes, labels=labels, difficult=difficult))
    return records


def _counted(count: int, singular: str, plural: str) -> str:
    return f"{count} {singular if count == 1 else plural}" if count else ""


def _listed(names: list[str], singular: str, plural: str, outcome: str) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:_NAMES_SHOWN])
    if len(names) > _NAMES_SHOWN:
        shown += f" and {len(names) - _NAMES_SHOWN} more"
    return f"{_counted(len(names), singular, plural)} ({outcome}): {shown}"
