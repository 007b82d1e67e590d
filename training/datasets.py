"""Detection data sets: Pascal VOC XML, COCO instances JSON and YOLO text labels, in the layouts of
``training/layouts.py`` (which ``open_dataset`` recognises by itself).

Every data set yields ``(image, target)``: ``image`` a float tensor [3, H, W] in 0..1, ``target`` a dict with
``boxes`` (float [N, 4], x1 y1 x2 y2 in pixels), ``labels`` (int64 [N], 1..K; label i+1 is ``class_names[i]``),
``difficult`` (bool [N]) and ``image_id`` (int: COCO's image id, or the image's position in the file when
some ids are texts; for VOC the position of the annotation file among the folder's sorted XML files, the same
in every split; for YOLO its position in the split).

Annotations are parsed once, when the data set is built, and each image's header is read then too (its real
size, its readability); pixels are decoded lazily in ``__getitem__`` by ``handler.decode``, the decoder serving
uses, so training sees photos exactly as the service does (EXIF orientation applied, every mode made RGB).

Messy real-world data never stops a run: what is repaired or dropped is counted in ONE ``DatasetWarning`` per
data set. Conventions:
- VOC coordinates are 1-based and inclusive (``xmin=1`` is the first pixel column), so a box becomes
  ``(xmin - 1, ymin - 1, xmax, ymax)`` in pixels, the same frame as COCO's ``(x, y, x + w, y + h)``. A VOC
  box with ``xmax <= xmin`` or ``ymax <= ymin`` (COCO: ``w <= 0`` or ``h <= 0``) is zero-size and dropped.
- The image file is the truth for the size: annotation sizes of 0x0 or another size are replaced by the
  size read from the image header, and boxes are clipped to it; nothing is rescaled.
- Boxes of a photo with an EXIF orientation are taken to be drawn on the photo as viewers show it (turned
  upright), which is also the frame in which the service answers.
- ``difficult`` VOC objects and COCO ``iscrowd`` objects are left out when ``include_difficult`` is False
  (training) and kept, marked ``difficult=True``, when it is True (evaluation).
- YOLO boxes (``class cx cy w h``, fractions of the image; or a polygon ``class x1 y1 x2 y2 ...``, whose
  bounding box is taken) are scaled by the real image size. A class number without a name is malformed.
- Images without objects stay in the set as negatives, also YOLO images without a label file (counted).
"""

from __future__ import annotations

import json
import math
import os
import warnings
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import torch
from torch.utils.data import Dataset

from handler.decode import ImageError, image_to_tensor, load_image_file, read_image_size
from handler.text import error_line
from training.layouts import IMAGE_EXTENSIONS, CocoSource, DatasetError, VocSource, find_layout

Transforms = Callable[[torch.Tensor, dict], "tuple[torch.Tensor, dict]"]
HASH_SPLITS = ("train", "val", "test", "all")
HASH_VAL_PERCENT = 10
Item = TypeVar("Item")

_NAMES_SHOWN = 5
_SIZE_NOTE = "(the annotation said 0x0 or another size)"


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
class _Object:
    name: str
    box: tuple[float, float, float, float] | None  # pixels x1 y1 x2 y2; None when zero-size or inverted
    difficult: bool


@dataclass
class _Entry:
    """One image as its annotation describes it, before it is checked against the image file."""

    name: str  # how messages name the image
    image_path: Path | None
    width: int  # as annotated; 0 when not given
    height: int
    image_id: int
    objects: list[_Object]
    malformed_objects: int = 0
    relative_boxes: bool = False  # boxes in fractions of the image (YOLO), scaled by its real size


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
    """

    def __init__(
        self, *, records: Sequence[ImageRecord], class_names: Sequence[str], transforms: Transforms | None = None,
        description: str = "data set",
    ) -> None:
        self.records = list(records)
        self.class_names = list(class_names)
        self.transforms = transforms
        self.description = description
        self.layout = "records given in code"  # open_dataset says which layout it found on disk

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


class VOCDataset(DetectionDataset):
    """Pascal VOC XML annotations: one XML file per image, in an annotation folder or beside the images.

    Class names, unless given, are the sorted object names of all annotation files of the folder, so every
    split of one folder gets the same list.

    Args:
        annotation_dir: the folder of the XML files.
        image_dir: the folder of the images (may be ``annotation_dir``).
        stems: the annotation file stems of the split (a VOCdevkit split file's lines); None: every XML file.
        hash_split: the part of ``stems`` to read by the hash split (see ``hash_split_of``); "all": every one.
        class_names: fixes the labels' order; objects of other classes are an error.
        include_difficult: keep difficult objects (marked) instead of leaving them out.
        transforms: called last on (image, target).
        description: names the data set and split in messages.

    Raises:
        DatasetError: no usable image, classes not covered.
    """

    def __init__(
        self, *, annotation_dir: str | os.PathLike, image_dir: str | os.PathLike,
        stems: Sequence[str] | None = None, hash_split: str = "all", class_names: Sequence[str] | None = None,
        include_difficult: bool = False, transforms: Transforms | None = None, description: str | None = None,
    ) -> None:
        annotation_dir, image_dir = Path(annotation_dir), Path(image_dir)
        description = description or str(annotation_dir)
        report = _Report()

        parsed = {path.stem: _parse_voc_xml(path) for path in sorted(annotation_dir.glob("*.xml"))}
        stems = hash_split_of(list(parsed) if stems is None else stems, hash_split, stem=lambda stem: stem)
        image_index = _ImageIndex(image_dir)
        image_ids = {stem: number for number, stem in enumerate(parsed)}
        entries = []
        for stem in stems:
            annotation = parsed.get(stem)
            if annotation is None:
                report.broken_annotations.append(f"{stem}.xml (missing)")
            elif isinstance(annotation, str):
                report.broken_annotations.append(f"{stem}.xml ({annotation})")
            else:
                entries.append(annotation.entry(image_index, stem, image_ids[stem]))

        data_names = sorted({o.name for a in parsed.values() if isinstance(a, _VocAnnotation) for o in a.objects})
        names = _resolve_class_names(data_names, class_names, entries, description)
        records = _build_records(entries, names, include_difficult, report)
        super().__init__(records=records, class_names=names, transforms=transforms, description=description)
        _finish(self, report)


class CocoDataset(DetectionDataset):
    """COCO instances JSON: ``bbox`` [x, y, w, h] becomes x1 y1 x2 y2; category ids, sorted, become labels 1..K.

    Ids are read as tools write them: a whole number or its digits in a text ("3" is 3), gaps allowed; image ids
    may be any text. A category that no annotation uses and that is the supercategory of others (Roboflow's
    id 0) is not a class.

    Args:
        annotation_file: the instances JSON.
        hash_split: "all", or "train"/"val"/"test" of the hash split (see ``hash_split_of``) of a file that holds
            every image.
        image_root: folder that ``file_name`` is relative to; by default the first of json_dir/../JPEGImages,
            json_dir/../images, json_dir/images and json_dir that holds the images.
        class_names: fixes the labels' order (by category name); objects of other classes are an error.
        include_difficult: keep ``iscrowd`` objects (marked difficult) instead of leaving them out.
        transforms: called last on (image, target).

    Raises:
        DatasetError: missing or unreadable file, no usable image, classes not covered; an image or category
            without a usable id, or an id given twice (the message names the file and the entry).
    """

    def __init__(
        self, *, annotation_file: str | os.PathLike, image_root: str | os.PathLike | None = None,
        hash_split: str = "all", class_names: Sequence[str] | None = None, include_difficult: bool = False,
        transforms: Transforms | None = None,
    ) -> None:
        annotation_file = Path(annotation_file)
        coco = _read_coco_json(annotation_file)
        image_ids = _coco_image_ids(annotation_file, coco["images"])
        images = hash_split_of(list(zip(image_ids, coco["images"])), hash_split,
                               stem=lambda item: Path(str(item[1].get("file_name", ""))).stem)
        root = Path(image_root) if image_root is not None else _find_coco_image_root(
            annotation_file, [image for _, image in images])
        description = f"{annotation_file}{'' if hash_split == 'all' else f' [{hash_split}]'} (images in {root})"
        report = _Report()

        category_names, report.unused_supercategories = _coco_categories(annotation_file, coco)
        # Whole-number ids are COCO's image ids; when some are texts, every image is numbered by its position.
        numbered = all(isinstance(image_id, int) for image_id in image_ids)
        positions = {image_id: position for position, image_id in enumerate(image_ids, start=1)}
        entries: dict[int | str, _Entry] = {}
        for image_id, image in images:
            file_name = str(image.get("file_name", ""))
            entries[image_id] = _Entry(
                name=file_name or f"image id {image_id}", image_path=root / file_name if file_name else None,
                width=_int_or_zero(image.get("width")), height=_int_or_zero(image.get("height")),
                image_id=image_id if numbered else positions[image_id], objects=[],
            )
        for annotation in coco["annotations"]:
            image_id = _coco_id(annotation.get("image_id")) if isinstance(annotation, dict) else None
            entry = entries.get(image_id)
            if entry is None and image_id in positions:
                continue  # an image of another split
            name = category_names.get(_coco_id(annotation.get("category_id"))) if entry is not None else None
            if name is None:
                report.orphan_annotations += 1
                continue
            try:
                x, y, width, height = _four_numbers(annotation.get("bbox"))
            except (TypeError, ValueError):
                entry.malformed_objects += 1
                continue
            box = (x, y, x + width, y + height) if width > 0 and height > 0 else None
            entry.objects.append(_Object(name=name, box=box, difficult=bool(annotation.get("iscrowd", 0))))

        names = _resolve_class_names(list(dict.fromkeys(category_names.values())), class_names,
                                     entries.values(), description)
        records = _build_records(entries.values(), names, include_difficult, report)
        super().__init__(records=records, class_names=names, transforms=transforms, description=description)
        _finish(self, report)


class YoloDataset(DetectionDataset):
    """YOLO labels: one .txt per image, a ``class cx cy w h`` line per object in fractions of the image.

    Args:
        images: (image path, label path) of each image; a missing label file makes the image a negative.
        hash_split: the part of ``images`` to read by the hash split (see ``hash_split_of``); "all": every one.
        names: class names by class number, from data.yaml or classes.txt; None: the classes are named by their
            numbers ("0", "1", ...), unless ``class_names`` names them in number order.
        class_names: fixes the labels' order (by name); objects of other classes are an error.
        include_difficult: YOLO has no difficult objects; accepted for a uniform call.
        transforms: called last on (image, target).
        description: names the data set and split in messages.

    Raises:
        DatasetError: no usable image, classes not covered.
    """

    def __init__(
        self, *, images: Sequence[tuple[Path, Path]], hash_split: str = "all", names: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None, include_difficult: bool = False,
        transforms: Transforms | None = None, description: str = "YOLO data set",
    ) -> None:
        report = _Report()
        parsed = [(image, _parse_yolo_labels(label))
                  for image, label in hash_split_of(images, hash_split, stem=lambda pair: pair[0].stem)]
        if names is None:
            numbers = [n for _, labels in parsed if labels is not None for n, _ in labels.objects]
            names = class_names or [str(n) for n in range(max(numbers, default=-1) + 1)]
        entries = []
        for image_id, (image, labels) in enumerate(parsed):
            if labels is None:
                report.unlabelled_images += 1
                labels = _YoloLabels(objects=[], malformed=0)
            objects = [_Object(name=names[n], box=box, difficult=False) for n, box in labels.objects
                       if n < len(names)]
            entries.append(_Entry(name=image.name, image_path=image, width=0, height=0, image_id=image_id,
                                  objects=objects, malformed_objects=labels.malformed + len(labels.objects)
                                  - len(objects), relative_boxes=True))
        resolved = _resolve_class_names(list(names), class_names, entries, description)
        records = _build_records(entries, resolved, include_difficult, report)
        super().__init__(records=records, class_names=resolved, transforms=transforms, description=description)
        _finish(self, report)


def open_dataset(
    path: str | os.PathLike, split: str = "train", *, format: str | None = None,
    class_names: Sequence[str] | None = None, include_difficult: bool = False, transforms: Transforms | None = None,
) -> DetectionDataset:
    """Opens a detection data set in any layout of ``training/layouts.py``, recognised from what is on disk.

    Args:
        path: the data set folder, a COCO .json or a YOLO data.yaml.
        split: which part to read ("train", "val", "test", "all", ...).
        format: "voc", "coco" or "yolo" to skip the guess; None guesses.
        class_names: fixes the label order (e.g. a checkpoint's); default: from the data.
        include_difficult: keep difficult/crowd objects, marked (evaluation), instead of leaving them out.
        transforms: called last on (image, target).

    Raises:
        DatasetError: missing path, unknown layout, empty split, class list not covering the data.
    """
    source = find_layout(path, split, format=format)
    options = {"class_names": class_names, "include_difficult": include_difficult, "transforms": transforms}
    if isinstance(source, VocSource):
        dataset: DetectionDataset = VOCDataset(
            annotation_dir=source.annotation_dir, image_dir=source.image_dir, stems=source.stems,
            hash_split=source.hash_split, description=source.description, **options)
    elif isinstance(source, CocoSource):
        dataset = CocoDataset(annotation_file=source.annotation_file, hash_split=source.hash_split, **options)
    else:
        dataset = YoloDataset(images=source.images, hash_split=source.hash_split, names=source.class_names,
                              description=source.description, **options)
    dataset.layout = source.layout
    return dataset


def hash_split_of(items: Sequence[Item], split: str, *, stem: Callable[[Item], str]) -> list[Item]:
    """The items of ``split`` of a data set without splits of its own, in their order.

    A stable hash (CRC-32) of each image's file stem puts about ``HASH_VAL_PERCENT`` % of the images into "val"
    (the same images serve as "test"); "train" is the rest, "all" everything. The same image lands in the same
    split in every layout and on every machine.

    Args:
        stem: the file stem of an item's image (for VOC, of its annotation file).
    Raises:
        DatasetError: for a split other than train, val, test and all.
    """
    if split not in HASH_SPLITS:
        raise DatasetError(f"a data set without splits has no split '{split}' (it has: {', '.join(HASH_SPLITS)})")
    if split == "all":
        return list(items)
    return [item for item in items if hash_held_out(stem(item)) == (split in ("val", "test"))]


def hash_held_out(stem: str) -> bool:
    """Whether the hash split puts the image of this file stem into "val" and "test" (else into "train")."""
    return zlib.crc32(stem.encode("utf-8")) % 100 < HASH_VAL_PERCENT


# --- VOC -------------------------------------------------------------------------------------------------------


_VOC_BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


@dataclass
class _VocAnnotation:
    file_name: str
    width: int
    height: int
    objects: list[_Object]
    malformed_objects: int

    def entry(self, image_index: "_ImageIndex", stem: str, image_id: int) -> _Entry:
        return _Entry(
            name=self.file_name or stem, image_path=image_index.find(self.file_name, stem), width=self.width,
            height=self.height, image_id=image_id, objects=self.objects, malformed_objects=self.malformed_objects,
        )


def _parse_voc_xml(path: Path) -> _VocAnnotation | str:
    """Reads one VOC XML file; returns why it is unusable instead when it is."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        return f"not valid XML: {exc}"
    if root.tag != "annotation":
        return f"root element is <{root.tag}>, not <annotation>"
    objects, malformed = [], 0
    for element in root.iter("object"):
        name = (element.findtext("name") or "").strip()
        try:
            xmin, ymin, xmax, ymax = _four_numbers(element.findtext(f"bndbox/{tag}") for tag in _VOC_BOX_TAGS)
        except (TypeError, ValueError):  # a coordinate missing or not a number
            name = ""
        if not name:
            malformed += 1
            continue
        box = (xmin - 1, ymin - 1, xmax, ymax) if xmax > xmin and ymax > ymin else None
        objects.append(_Object(name=name, box=box, difficult=_int_or_zero(element.findtext("difficult")) == 1))
    return _VocAnnotation(
        file_name=(root.findtext("filename") or "").strip(), width=_int_or_zero(root.findtext("size/width")),
        height=_int_or_zero(root.findtext("size/height")), objects=objects, malformed_objects=malformed,
    )


class _ImageIndex:
    """The image files of a folder, found by name or, failing that, by stem with any image extension."""

    def __init__(self, folder: Path) -> None:
        files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        self.by_name = {p.name: p for p in files}
        self.by_stem: dict[str, Path] = {}
        for path in files:
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                self.by_stem.setdefault(path.stem, path)

    def find(self, file_name: str, stem: str) -> Path | None:
        name = Path(file_name).name  # some tools write a path from the annotator's machine
        return self.by_name.get(name) or self.by_stem.get(Path(name).stem) or self.by_stem.get(stem)


# --- YOLO ------------------------------------------------------------------------------------------------------


@dataclass
class _YoloLabels:
    objects: list[tuple[int, tuple[float, float, float, float] | None]]  # class number, box in fractions
    malformed: int


def _parse_yolo_labels(path: Path) -> _YoloLabels | None:
    """Reads one YOLO label file (None when there is none); boxes are x1 y1 x2 y2 in fractions of the image."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return _YoloLabels(objects=[], malformed=1)
    labels = _YoloLabels(objects=[], malformed=0)
    for line in text.splitlines():
        values = line.split()
        if not values:
            continue
        try:
            number, coordinates = int(values[0]), [float(v) for v in values[1:]]
        except ValueError:
            labels.malformed += 1
            continue
        if number < 0 or not all(math.isfinite(c) for c in coordinates) or \
                not (len(coordinates) == 4 or (len(coordinates) >= 6 and len(coordinates) % 2 == 0)):
            labels.malformed += 1
            continue
        if len(coordinates) == 4:
            cx, cy, w, h = coordinates
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        else:  # a segmentation polygon: its bounding box, as Ultralytics trains detection on it
            xs, ys = coordinates[0::2], coordinates[1::2]
            box = (min(xs), min(ys), max(xs), max(ys))
        labels.objects.append((number, box if box[2] > box[0] and box[3] > box[1] else None))
    return labels


# --- COCO ------------------------------------------------------------------------------------------------------


def _read_coco_json(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"annotation file not found: {path}")
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "categories")):
        raise DatasetError(f"{path} is not a COCO instances file (needs 'images' and 'categories' lists)")
    coco.setdefault("annotations", [])
    return coco


def _coco_id(value: object) -> int | str | None:
    """A COCO id as a key: a whole number, written as a number or as the digits of a text ("3" is 3); any
    other non-empty text as it is; None for the rest (null, true, 2.5, a list)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and value.strip():
        try:
            return int(value)
        except ValueError:
            return value.strip()
    return None


def _shown_id(entry: object) -> str:
    return repr(entry.get("id")) if isinstance(entry, dict) else "an entry that is not an object"


def _coco_image_ids(path: Path, images: list) -> list[int | str]:
    """Each image's id (see ``_coco_id``).

    Raises:
        DatasetError: an image that is not an object, has no usable id, or shares its id with another image.
    """
    ids: dict[int | str, int] = {}
    for index, image in enumerate(images):
        image_id = _coco_id(image.get("id")) if isinstance(image, dict) else None
        if image_id is None:
            raise DatasetError(f"{path}: images[{index}].id must be a number or a text, got {_shown_id(image)}")
        if image_id in ids:
            raise DatasetError(f"{path}: images[{index}].id {image_id!r} is also the id of images[{ids[image_id]}]")
        ids[image_id] = index
    return list(ids)


def _coco_categories(path: Path, coco: dict) -> tuple[dict[int, str], list[str]]:
    """Class names by category id, in id order, and the unused supercategories left out of them.

    Roboflow's exports hold a category (id 0) named after the supercategory of all the others that no
    annotation uses: as a class the model would never see an example of it, so such a category is no class.

    Raises:
        DatasetError: a category that is not an object, whose id is not a whole number, or whose id is another
            category's with another name.
    """
    names: dict[int, str] = {}
    parents: set[str] = set()  # the supercategories of categories other than themselves
    for index, category in enumerate(coco["categories"]):
        category_id = _coco_id(category.get("id")) if isinstance(category, dict) else None
        if not isinstance(category_id, int):
            raise DatasetError(f"{path}: categories[{index}].id must be a whole number, got {_shown_id(category)}")
        name = str(category.get("name", category_id)).strip()
        if names.setdefault(category_id, name) != name:
            raise DatasetError(f"{path}: categories[{index}].id gives {name!r} the id {category_id}, which is "
                               f"already the id of {names[category_id]!r}")
        if str(category.get("supercategory", name)).strip() != name:
            parents.add(str(category["supercategory"]).strip())
    used = {_coco_id(a.get("category_id")) for a in coco["annotations"] if isinstance(a, dict)}
    left_out = sorted(category_id for category_id, name in names.items() if category_id not in used and name in parents)
    kept = {category_id: name for category_id, name in sorted(names.items()) if category_id not in left_out}
    return kept, [names[category_id] for category_id in left_out]


def _find_coco_image_root(annotation_file: Path, images: list[dict]) -> Path:
    folder = annotation_file.parent
    candidates = [folder.parent / "JPEGImages", folder.parent / "images", folder / "images", folder]
    sample = [str(image.get("file_name", "")) for image in images[:20]]
    for candidate in candidates:
        if any(name and (candidate / name).is_file() for name in sample):
            return candidate
    return next(c for c in candidates if c.is_dir())  # the images are missing: reported by name later


# --- shared ----------------------------------------------------------------------------------------------------


def _resolve_class_names(
    data_names: list[str], requested: Sequence[str] | None, entries: Iterable[_Entry], description: str,
) -> list[str]:
    """The data's class names, or the requested list after checking it covers every object of the split."""
    if requested is None:
        if not data_names:
            raise DatasetError(f"{description}: no object classes found in the annotations (give class names)")
        return data_names
    names = [str(name).strip() for name in requested]
    if not names or "" in names or len(set(names)) != len(names):
        raise DatasetError(f"class names must be distinct and non-empty: {', '.join(names) or '(none)'}")
    uncovered = sorted({o.name for entry in entries for o in entry.objects} - set(names))
    if uncovered:
        raise DatasetError(
            f"{description} has objects of classes not in the class list: {', '.join(uncovered)} "
            f"(class list: {', '.join(names)})"
        )
    return names


def _build_records(
    entries: Iterable[_Entry], class_names: list[str], include_difficult: bool, report: _Report,
) -> list[ImageRecord]:
    """Checks each entry against its image file and turns its objects into final boxes and labels."""
    label_of = {name: number + 1 for number, name in enumerate(class_names)}
    records = []
    for entry in entries:
        if entry.image_path is None or not entry.image_path.is_file():
            report.missing_images.append(entry.name)
            continue
        try:
            width, height = read_image_size(entry.image_path)
        except (ImageError, OSError) as exc:
            report.unreadable_images.append(f"{entry.name} ({getattr(exc, 'error', type(exc).__name__)})")
            continue
        report.malformed_objects += entry.malformed_objects
        if (entry.width, entry.height) != (width, height) and not entry.relative_boxes:
            report.corrected_sizes += 1
        boxes, labels, difficult = [], [], []
        for obj in entry.objects:
            if obj.box is None:
                report.zero_size_boxes += 1
                continue
            x1, y1, x2, y2 = obj.box
            if entry.relative_boxes:  # rounded so that an edge written as 1.0000001 is not "clipped"
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
        records.append(ImageRecord(path=entry.image_path, image_id=entry.image_id, width=width, height=height,
                                   boxes=boxes, labels=labels, difficult=difficult))
    return records


def _finish(dataset: DetectionDataset, report: _Report) -> None:
    """Refuses an empty data set and issues the data set's one warning."""
    summary = report.summary()
    if not dataset.records:
        raise DatasetError(f"{dataset.description}: no usable images" + (f" ({summary})" if summary else ""))
    if summary:
        warnings.warn(f"{dataset.description}: {summary}", DatasetWarning, stacklevel=3)


def _four_numbers(values) -> tuple[float, float, float, float]:
    """Raises TypeError or ValueError unless ``values`` are four finite numbers."""
    numbers = tuple(float(value) for value in values)
    if len(numbers) != 4 or not all(math.isfinite(number) for number in numbers):
        raise ValueError(f"not four finite numbers: {numbers}")
    return numbers


def _int_or_zero(value) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 0


def _counted(count: int, singular: str, plural: str) -> str:
    return f"{count} {singular if count == 1 else plural}" if count else ""


def _listed(names: list[str], singular: str, plural: str, outcome: str) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:_NAMES_SHOWN])
    if len(names) > _NAMES_SHOWN:
        shown += f" and {len(names) - _NAMES_SHOWN} more"
    return f"{_counted(len(names), singular, plural)} ({outcome}): {shown}"
