"""YOLO text labels: one .txt per image, a ``class cx cy w h`` line per object in fractions of the image.

Layouts: a ``data.yaml`` (Ultralytics, Roboflow, CVAT) with ``names`` and ``train``/``val``/``test`` paths
(folders, lists of folders or .txt lists of images) under its ``path``, which is found as Ultralytics finds it
(see ``_base_folder``), a label being the image's path with its last ``images/`` made ``labels/`` and a .txt
suffix; an image folder and .txt files in ``labels/`` (with ``train/``, ``val/`` subfolders on both sides, or
none), or .txt beside the images (LabelImg's YOLO mode), class names from ``classes.txt`` / ``obj.names`` where
there is one.

A polygon line (``class x1 y1 x2 y2 ...``) gives its bounding box, as Ultralytics trains detection on it. Boxes
are scaled by the real image size. Without class names the classes are named by their numbers ("0", "1", ...,
up to the highest number in the source's labels), unless the class list asked for names them in number order;
a class number without a name is a malformed object. An image without a label file is a negative.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import yaml

from handler.text import error_line
from training.data_format import (
    IMAGE_EXTENSIONS,
    SPLIT_ALIASES,
    AnnotatedImage,
    AnnotatedObject,
    Annotations,
    DataFile,
    DataFormat,
    DatasetError,
    Finder,
    Source,
    child_folder,
    image_files,
    image_folder,
    split_folders,
)

LABEL_FOLDERS = ("labels", "label")
NAMES_FILES = ("classes.txt", "obj.names", "classes.names")


@dataclass(frozen=True, kw_only=True)
class YoloSource(Source):
    """YOLO images, each with the .txt path its labels would have (it may not exist).

    Attributes:
        class_names: from data.yaml or a names file, by class number; None when the data names no classes.
    """

    images: tuple[tuple[Path, Path], ...]
    class_names: tuple[str, ...] | None

    def read(self, class_names: Sequence[str] | None) -> Annotations:
        labelled = [(image, _parse_labels(label)) for image, label in self.images]
        names = self.class_names
        if names is None:
            numbers = [n for _, labels in labelled if labels is not None for n, _ in labels.objects]
            names = class_names or [str(n) for n in range(max(numbers, default=-1) + 1)]
        images = []
        for image_id, (image, labels) in enumerate(labelled):
            found = labels if labels is not None else _Labels(objects=[], malformed=0)
            objects = [AnnotatedObject(name=names[n], box=box, difficult=False) for n, box in found.objects
                       if n < len(names)]
            images.append(AnnotatedImage(
                name=image.name, image_path=image, image_id=image_id, objects=objects, relative_boxes=True,
                malformed_objects=found.malformed + len(found.objects) - len(objects), unlabelled=labels is None))
        return Annotations(images=images, class_names=list(names), description=self.description)

    def in_split_folder(self, root: Path, split: str) -> Source:
        # A Roboflow export keeps its classes.txt beside the split folders.
        found = super().in_split_folder(root, split)
        return replace(found, class_names=self.class_names or _names_file(root))


def find_data_yaml(root: Path, split: str) -> YoloSource | None:
    """The folder's data.yaml (any .yaml with ``names`` and a ``train`` or ``val`` entry)."""
    for candidate in sorted(root.glob("*.y*ml"), key=lambda p: (p.stem != "data", p.name)):
        try:
            content = yaml.safe_load(candidate.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(content, dict) and "names" in content and ("train" in content or "val" in content):
            return open_data_yaml(candidate, split)
    return None


def open_data_yaml(data_yaml: Path, split: str) -> YoloSource:
    """The images of ``split`` that a data.yaml names ("all": of every split)."""
    try:
        content = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DatasetError(f"cannot read {data_yaml}: {error_line(exc)}") from None
    if not isinstance(content, dict) or "names" not in content:
        raise DatasetError(f"{data_yaml} is not a YOLO data.yaml (it needs 'names' and 'train'/'val' paths)")
    names = _yaml_names(content["names"], data_yaml)
    entries = {key: content[key] for key in ("train", "val", "test") if content.get(key)}
    if split == "all":
        wanted = list(entries.values())
    else:
        key = next((k for k, aliases in SPLIT_ALIASES.items() if split in aliases and k in entries), None)
        if key is None:
            raise DatasetError(f"{data_yaml} has no split '{split}' (it has: {', '.join(entries) or 'none'})")
        wanted = [entries[key]]
    items = [str(item) for entry in wanted for item in (entry if isinstance(entry, list) else [entry])]
    base = _base_folder(data_yaml, content.get("path"), items)
    images: dict[Path, Path] = {}
    for item in items:
        for image in _entry_images(base, item, data_yaml):
            images.setdefault(image, _ultralytics_label_path(image))
    return YoloSource(layout=f"YOLO ({data_yaml.name})", images=tuple(images.items()), class_names=names,
                      hash_split="all", description=f"{data_yaml} [{split}]")


def find_folders(root: Path, split: str) -> YoloSource | None:
    """images/ + labels/ (optionally with split subfolders on both sides), or .txt beside the images."""
    image_dir = image_folder(root)
    label_dir = child_folder(root, LABEL_FOLDERS)
    if label_dir is not None and any(p.suffix == ".txt" and p.name not in NAMES_FILES
                                     for p in label_dir.rglob("*.txt")):
        kind = f"{image_dir.name}/ + {label_dir.name}/"
    elif _has_labels_beside(image_dir):
        label_dir, kind = image_dir, "labels beside the images"
    else:
        return None
    names = _names_file(root, image_dir, label_dir)
    splits = split_folders(image_dir) if image_dir != root else {}
    if splits:  # images/train, images/val with labels/train, labels/val
        chosen = list(splits.values()) if split == "all" else [splits.get(split)]
        if chosen[0] is None:
            raise DatasetError(f"{root} has no split '{split}' (it has: {', '.join(sorted(splits))})")
        images, hash_split = [p for folder in chosen for p in image_files(folder)], "all"
    else:
        images, hash_split = image_files(image_dir), split
    pairs = tuple((image, (label_dir / image.relative_to(image_dir)).with_suffix(".txt")) for image in images)
    return YoloSource(layout=f"YOLO ({kind})", images=pairs, class_names=names, hash_split=hash_split,
                      description=f"{root} [{split}]")


FORMAT = DataFormat(
    looked_for="data.yaml (YOLO); images/ + labels/ with .txt, or .txt beside the images (YOLO)",
    finders=(Finder(rank=10, find=find_data_yaml), Finder(rank=50, find=find_folders)),
    data_file=DataFile(suffixes=(".yaml", ".yml"), kind="a YOLO data.yaml", open=open_data_yaml),
)


# --- data.yaml -------------------------------------------------------------------------------------------------


def _yaml_names(names, data_yaml: Path) -> tuple[str, ...]:
    if isinstance(names, dict):  # {0: person, 1: bicycle}
        try:
            by_number = {int(k): str(v) for k, v in names.items()}
        except ValueError:
            raise DatasetError(f"{data_yaml}: 'names' keys must be class numbers") from None
        if sorted(by_number) != list(range(len(by_number))):
            raise DatasetError(f"{data_yaml}: 'names' must number the classes 0..{len(by_number) - 1}")
        return tuple(by_number[k] for k in range(len(by_number)))
    if isinstance(names, list):
        return tuple(str(name) for name in names)
    raise DatasetError(f"{data_yaml}: 'names' must be a list or a mapping of class numbers to names")


def _base_folder(data_yaml: Path, written: object, items: list[str]) -> Path:
    """The folder the ``train``/``val``/``test`` entries are relative to, found by Ultralytics' rule
    (``check_det_dataset``): no ``path``: the data.yaml's folder; an absolute ``path``: itself; a relative
    ``path``: the current folder's ``path`` when that exists. Ultralytics would otherwise take it relative to its
    own ``datasets_dir`` setting, which only Ultralytics knows: here the data.yaml's folder is taken instead, and
    also when the entries are not under the current folder's ``path`` (a CVAT export's ``path: .`` read from
    elsewhere). ``$VARIABLES`` in ``path`` are expanded, as Ultralytics does.

    Raises:
        DatasetError: an entry found under none of these folders; the message names each folder and its rule.
    """
    if not written:
        candidates = [(data_yaml.parent, "the data.yaml's folder, as there is no 'path'")]
    else:
        path = Path(os.path.expandvars(str(written)))
        beside = (data_yaml.parent / path, f"'path: {written}' taken from the data.yaml's folder")
        if path.is_absolute():
            candidates = [(path, f"'path: {written}'")]
        elif path.exists():
            candidates = [(path.resolve(), f"'path: {written}' taken from the current folder, as Ultralytics "
                                           "takes it"), beside]
        else:
            candidates = [beside]
    for base, _ in candidates:
        if all(_entry_path(base, item).exists() for item in items):
            return base
    missing = next(item for item in items if not _entry_path(candidates[-1][0], item).exists())
    looked = "; ".join(f"{_entry_path(base, missing)} ({rule})" for base, rule in candidates)
    raise DatasetError(f"{data_yaml}: {missing} not found (looked in {looked})")


def _entry_path(base: Path, item: str) -> Path:
    """Where a ``train``/``val``/``test`` entry points, as Ultralytics finds it."""
    path = (base / item).resolve()
    if not path.exists() and item.startswith("../"):  # Roboflow writes ../train/images beside the yaml
        path = (base / item[3:]).resolve()
    return path


def _entry_images(base: Path, item: str, data_yaml: Path) -> list[Path]:
    """The images of one ``train``/``val``/``test`` entry: a folder (searched recursively) or a .txt list."""
    path = _entry_path(base, item)
    if path.is_dir():
        return image_files(path)
    if path.suffix != ".txt":
        raise DatasetError(f"{data_yaml}: {item} is neither a folder of images nor a .txt list of them ({path})")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [(path.parent / line).resolve() if line.startswith("./") else (base / line).resolve() for line in lines]


def _ultralytics_label_path(image: Path) -> Path:
    parts = list(image.parts)
    for index in range(len(parts) - 2, -1, -1):  # the last images/ folder above the file
        if parts[index] == "images":
            parts[index] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


# --- folders ---------------------------------------------------------------------------------------------------


def _names_file(*folders: Path) -> tuple[str, ...] | None:
    for folder in folders:
        for name in NAMES_FILES:
            if (folder / name).is_file():
                return tuple(line.strip() for line in (folder / name).read_text().splitlines() if line.strip())
    return None


def _has_labels_beside(folder: Path) -> bool:
    """Whether some image of the folder has a .txt of the same stem beside it."""
    stems = {p.stem for p in folder.glob("*.txt")}
    return any(p.stem in stems for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


# --- label files -----------------------------------------------------------------------------------------------


@dataclass
class _Labels:
    objects: list[tuple[int, tuple[float, float, float, float] | None]]  # class number, box in fractions
    malformed: int


def _parse_labels(path: Path) -> _Labels | None:
    """Reads one YOLO label file (None when there is none); boxes are x1 y1 x2 y2 in fractions of the image."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return _Labels(objects=[], malformed=1)
    labels = _Labels(objects=[], malformed=0)
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
