"""Detection data sets: Pascal VOC (VOCdevkit and flat layouts) and COCO instances JSON.

Every data set yields ``(image, target)``: ``image`` a float tensor [3, H, W] in 0..1, ``target`` a dict with
``boxes`` (float [N, 4], x1 y1 x2 y2 in pixels), ``labels`` (int64 [N], 1..K; label i+1 is ``class_names[i]``),
``difficult`` (bool [N]) and ``image_id`` (int: COCO's image id; for VOC the position of the annotation file
among the folder's sorted XML files, the same in every split).

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
- Images without objects stay in the set as negatives.
- The flat VOC layout (``images/`` + ``annotations/``) has no split files: a stable hash of each file stem puts
  about 10% of the images into "val" (the same images serve as "test"); "train" is the rest, "all" everything.
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
from typing import Callable, Iterable, Sequence

import torch
from torch.utils.data import Dataset

from handler.decode import ImageError, image_to_tensor, load_image_file, read_image_size

Transforms = Callable[[torch.Tensor, dict], "tuple[torch.Tensor, dict]"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".ico")
FLAT_VOC_SPLITS = ("train", "val", "test", "all")
FLAT_VOC_VAL_PERCENT = 10
_NAMES_SHOWN = 5
_SIZE_NOTE = "(the annotation said 0x0 or another size)"


class DatasetError(ValueError):
    """A data set that cannot be used at all; the message is one line for the user."""


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


@dataclass
class _Report:
    """Counts of what was repaired or dropped, turned into the one warning of a data set."""

    missing_images: list[str] = field(default_factory=list)
    unreadable_images: list[str] = field(default_factory=list)
    broken_annotations: list[str] = field(default_factory=list)
    malformed_objects: int = 0
    orphan_annotations: int = 0
    zero_size_boxes: int = 0
    clipped_boxes: int = 0
    outside_boxes: int = 0
    corrected_sizes: int = 0
    difficult_left_out: int = 0

    def summary(self) -> str:
        parts = [
            _listed(self.missing_images, "image file missing", "image files missing", "dropped"),
            _listed(self.unreadable_images, "image unreadable", "images unreadable", "dropped"),
            _listed(self.broken_annotations, "annotation unreadable", "annotations unreadable", "skipped"),
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

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict] | UnreadableImage:
        """The image and its target, or an ``UnreadableImage`` that the batch leaves out (see collate_as_lists)."""
        record = self.records[index]
        try:
            image = image_to_tensor(load_image_file(record.path))
        except (ImageError, OSError) as exc:  # the header was fine when the set was built, the pixels are not
            return UnreadableImage(path=record.path, reason=str(exc) or type(exc).__name__)
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
    """Pascal VOC XML annotations, in a VOCdevkit folder or in flat ``images/`` + ``annotations/`` folders.

    Class names, unless given, are the sorted object names of all annotation files of the folder, so every
    split of one folder gets the same list.

    Args:
        root: a folder with ``Annotations/``, ``JPEGImages/`` and ``ImageSets/Main/{split}.txt``, or with
            ``images/`` and ``annotations/*.xml``.
        split: a split file name ("train", "val", "trainval", ...) or "all"; flat layout: train, val, test, all.
        class_names: fixes the labels' order; objects of other classes are an error.
        include_difficult: keep difficult objects (marked) instead of leaving them out.
        transforms: called last on (image, target).

    Raises:
        DatasetError: missing folder, unknown layout or split, no usable image, classes not covered.
    """

    def __init__(
        self, *, root: str | os.PathLike, split: str = "train", class_names: Sequence[str] | None = None,
        include_difficult: bool = False, transforms: Transforms | None = None,
    ) -> None:
        root = Path(root)
        devkit = (root / "Annotations").is_dir()
        if devkit:
            annotation_dir, image_dir = root / "Annotations", root / "JPEGImages"
        elif (root / "annotations").is_dir() and (root / "images").is_dir():
            annotation_dir, image_dir = root / "annotations", root / "images"
        else:
            raise DatasetError(f"{root} is not a VOC data set (no Annotations/ or images/ + annotations/ folders)")
        description = f"{root} [{split}]"
        report = _Report()

        parsed = {path.stem: _parse_voc_xml(path) for path in sorted(annotation_dir.glob("*.xml"))}
        stems = _devkit_split(root, split, parsed) if devkit else _flat_split(root, split, parsed)
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

    Args:
        annotation_file: the instances JSON.
        image_root: folder that ``file_name`` is relative to; by default the first of json_dir/../JPEGImages,
            json_dir/../images, json_dir/images and json_dir that holds the images.
        class_names: fixes the labels' order (by category name); objects of other classes are an error.
        include_difficult: keep ``iscrowd`` objects (marked difficult) instead of leaving them out.
        transforms: called last on (image, target).

    Raises:
        DatasetError: missing or unreadable file, no usable image, classes not covered.
    """

    def __init__(
        self, *, annotation_file: str | os.PathLike, image_root: str | os.PathLike | None = None,
        class_names: Sequence[str] | None = None, include_difficult: bool = False,
        transforms: Transforms | None = None,
    ) -> None:
        annotation_file = Path(annotation_file)
        coco = _read_coco_json(annotation_file)
        images = [image for image in coco["images"] if isinstance(image, dict) and "id" in image]
        root = Path(image_root) if image_root is not None else _find_coco_image_root(annotation_file, images)
        description = f"{annotation_file} (images in {root})"
        report = _Report()

        categories = sorted((c for c in coco["categories"] if isinstance(c, dict) and "id" in c),
                            key=lambda c: c["id"])
        category_names = {c["id"]: str(c.get("name", c["id"])).strip() for c in categories}
        entries: dict[object, _Entry] = {}
        for image in images:
            file_name = str(image.get("file_name", ""))
            entries[image["id"]] = _Entry(
                name=file_name or f"image id {image['id']}", image_path=root / file_name if file_name else None,
                width=_int_or_zero(image.get("width")), height=_int_or_zero(image.get("height")),
                image_id=int(image["id"]), objects=[],
            )
        for annotation in coco["annotations"]:
            entry = entries.get(annotation.get("image_id")) if isinstance(annotation, dict) else None
            name = category_names.get(annotation.get("category_id")) if entry is not None else None
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


def open_dataset(
    path: str | os.PathLike, split: str = "train", *, class_names: Sequence[str] | None = None,
    include_difficult: bool = False, transforms: Transforms | None = None,
) -> DetectionDataset:
    """Opens a detection data set, recognising its format from what is on disk.

    A ``.json`` file is COCO (``split`` is ignored); a folder with ``ImageSets/Main/{split}.txt`` is VOCdevkit;
    one with ``annotations/instances_{split}.json`` is COCO; one with ``images/`` and ``annotations/*.xml`` is
    flat VOC.

    Args:
        path: the data set file or folder.
        split: which part to read ("train", "val", "test", "all", ...).
        class_names: fixes the label order (e.g. a checkpoint's); default: from the data.
        include_difficult: keep difficult/crowd objects, marked (evaluation), instead of leaving them out.
        transforms: called last on (image, target).

    Raises:
        DatasetError: missing path, unknown layout, empty split, class list not covering the data.
    """
    path = Path(path)
    options = {"class_names": class_names, "include_difficult": include_difficult, "transforms": transforms}
    if not path.exists():
        raise DatasetError(f"data set not found: {path}")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return CocoDataset(annotation_file=path, **options)
        raise DatasetError(f"{path} is not a data set: give a COCO .json file or a data set folder")
    coco_file = path / "annotations" / f"instances_{split}.json"
    devkit_split = (path / "ImageSets" / "Main" / f"{split}.txt").is_file()
    if devkit_split or (split == "all" and (path / "Annotations").is_dir()):
        return VOCDataset(root=path, split=split, **options)
    if coco_file.is_file():
        return CocoDataset(annotation_file=coco_file, **options)
    if (path / "images").is_dir() and any((path / "annotations").glob("*.xml")):
        return VOCDataset(root=path, split=split, **options)
    if (path / "ImageSets" / "Main").is_dir() or any((path / "annotations").glob("instances_*.json")):
        raise DatasetError(f"{path} has no split '{split}' (it has: {', '.join(_splits_on_disk(path))})")
    raise DatasetError(
        f"{path} is not a known data set layout: expected ImageSets/Main/{split}.txt (VOCdevkit), "
        f"annotations/instances_{split}.json (COCO) or images/ + annotations/*.xml (flat VOC)"
        + _layouts_below(path)
    )


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


def _devkit_split(root: Path, split: str, parsed: dict) -> list[str]:
    if split == "all":
        return list(parsed)
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise DatasetError(f"{root} has no split '{split}' (it has: {', '.join(_splits_on_disk(root))})")
    return [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]


def _flat_split(root: Path, split: str, parsed: dict) -> list[str]:
    if split not in FLAT_VOC_SPLITS:
        raise DatasetError(f"{root} has no split '{split}' (a flat VOC folder has: {', '.join(FLAT_VOC_SPLITS)})")
    if split == "all":
        return list(parsed)
    held_out = split in ("val", "test")
    return [stem for stem in parsed if _is_held_out(stem) == held_out]


def _is_held_out(stem: str) -> bool:
    return zlib.crc32(stem.encode("utf-8")) % 100 < FLAT_VOC_VAL_PERCENT


def _splits_on_disk(root: Path) -> list[str]:
    voc = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
    coco = sorted(p.stem.removeprefix("instances_") for p in (root / "annotations").glob("instances_*.json"))
    return sorted(set(voc + coco)) or ["none"]


def _layouts_below(path: Path) -> str:
    inner = sorted(p.name for p in path.iterdir()
                   if p.is_dir() and ((p / "Annotations").is_dir() or (p / "annotations").is_dir()))
    return f" (data sets found inside: {', '.join(inner)}; give one of them)" if inner else ""


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
        if (entry.width, entry.height) != (width, height):
            report.corrected_sizes += 1
        boxes, labels, difficult = [], [], []
        for obj in entry.objects:
            if obj.box is None:
                report.zero_size_boxes += 1
                continue
            x1, y1, x2, y2 = obj.box
            clipped = (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
                       min(max(x2, 0.0), width), min(max(y2, 0.0), height))
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                report.outside_boxes += 1
                continue
            if obj.difficult and not include_difficult:
                report.difficult_left_out += 1
                continue
            if clipped != obj.box:
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
