"""Finds where a detection data set keeps its images and annotations, in the layouts labelling tools export.

``find_layout(path, split)`` looks at folder and file names only (no annotation is parsed, except a YOLO
``data.yaml``) and returns a ``VocSource``, ``CocoSource`` or ``YoloSource`` naming the files of that split;
``training/datasets.py`` reads them. Layouts, in the order they are tried:

- YOLO ``data.yaml`` (Ultralytics, Roboflow, CVAT): ``names`` and ``train``/``val``/``test`` paths (folders,
  lists of folders or .txt lists of images) under its ``path``, which is found as Ultralytics finds it (a
  relative one in the current folder first; see ``_yolo_base``); a label is the image's path with its last
  ``images/`` made ``labels/`` and a .txt suffix, as Ultralytics finds them.
- Pascal VOC, VOCdevkit: ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/{split}.txt``.
- COCO instances JSON: ``annotations/instances_{split}.json``, or one other .json in the folder or in
  ``annotations/`` (Roboflow's ``_annotations.coco.json``, Label Studio's ``result.json``, CVAT's
  ``instances_default.json``).
- Pascal VOC, flat: an image folder (``images/``, ``image/``, ``JPEGImages/``, ``imgs/``, ``img/``) and XML
  in an annotation folder (``annotations/``, ``Annotations/``, ``labels/``, ``label/``, ``xml/``), or XML beside
  the images in one folder (LabelImg's default).
- YOLO, flat: an image folder and ``class cx cy w h`` .txt files in ``labels/`` (with ``train/``, ``val/``
  subfolders on both sides, or none), or .txt beside the images (LabelImg's YOLO mode); class names from
  ``classes.txt`` / ``obj.names`` where there is one.
- Split folders (Roboflow exports): ``train/``, ``valid/`` or ``val/``, ``test/``, each holding one of the
  layouts above.

A layout without splits of its own names all its files, and its source's ``hash_split`` is the split asked
for: ``training/datasets.py`` reads that part of the images, chosen by a stable hash of their file stems
(``hash_split_of``). Layouts with splits name the split's files, with ``hash_split`` "all".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from handler.text import error_line

FORMATS = ("voc", "coco", "yolo")
# Names of the image files a data set folder is searched for (handler/decode.py decodes them by content); .hif is
# the HEIF name of Canon and Fujifilm cameras.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".ico",
                    ".heic", ".heif", ".hif", ".avif")
# The names each split goes by in exports (Roboflow writes valid/).
SPLIT_ALIASES = {"val": ("val", "valid", "validation"), "test": ("test", "testing"), "train": ("train", "training")}
IMAGE_FOLDERS = ("images", "image", "jpegimages", "imgs", "img")
VOC_FOLDERS = ("annotations", "annotation", "labels", "label", "xml", "xmls")
YOLO_FOLDERS = ("labels", "label")
YOLO_NAMES_FILES = ("classes.txt", "obj.names", "classes.names")
# COCO files named instances_{split}.json belong to that split; CVAT names its only file instances_default.json.
COCO_UNSPLIT_NAMES = ("instances_default",)

LOOKED_FOR = {
    "yolo": "data.yaml (YOLO); images/ + labels/ with .txt, or .txt beside the images (YOLO)",
    "voc": "Annotations/ + ImageSets/Main/{split}.txt (VOCdevkit); images/ + annotations/ or labels/ with .xml, "
           "or .xml beside the images (Pascal VOC)",
    "coco": "annotations/instances_{split}.json or one COCO .json (COCO)",
}


class DatasetError(ValueError):
    """A data set that cannot be used at all; the message is one line for the user."""


@dataclass(frozen=True)
class VocSource:
    """Pascal VOC XML files of one split.

    Attributes:
        layout: what was found, for reports.
        annotation_dir / image_dir: the folders (the same one when the XML lies beside the images).
        stems: the split's annotation file stems, in order; None means every XML file of the folder.
        hash_split: the part of ``stems`` to take by the hash split, "all" for every one.
        description: names the data set and split in messages.
    """

    layout: str
    annotation_dir: Path
    image_dir: Path
    stems: tuple[str, ...] | None
    hash_split: str
    description: str


@dataclass(frozen=True)
class CocoSource:
    """A COCO instances JSON; ``hash_split`` other than "all" picks that part of its images by the hash split."""

    layout: str
    annotation_file: Path
    hash_split: str


@dataclass(frozen=True)
class YoloSource:
    """YOLO images of one split, each with the .txt path its labels would have (it may not exist).

    Attributes:
        class_names: from data.yaml or a names file, by class number; None when the data names no classes.
        hash_split: the part of ``images`` to take by the hash split, "all" for every one.
    """

    layout: str
    images: tuple[tuple[Path, Path], ...]
    class_names: tuple[str, ...] | None
    hash_split: str
    description: str


Source = VocSource | CocoSource | YoloSource


def find_layout(path: str | Path, split: str = "train", *, format: str | None = None) -> Source:
    """Recognises the layout of the data set at ``path`` and names the files of ``split`` (for data without
    splits of its own: all its files, and the split for ``datasets.hash_split_of`` to take from them).

    Args:
        path: a data set folder, a COCO .json or a YOLO data.yaml.
        split: "train", "val", "test", "all", or a split name the data defines (e.g. VOC's "trainval").
        format: "voc", "coco" or "yolo" to consider only that format's layouts; None guesses.

    Raises:
        DatasetError: missing path, no known layout (the message lists what was looked for), unknown split
            (for data without splits, ``hash_split_of`` refuses it when the data set is read).
    """
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise DatasetError(f"unknown data set format {format!r}; choose one of: {', '.join(FORMATS)}")
    if not path.exists():
        raise DatasetError(f"data set not found: {path}")
    formats = (format,) if format else FORMATS
    if path.is_file():
        if path.suffix.lower() == ".json" and "coco" in formats:
            return CocoSource(layout="COCO instances JSON", annotation_file=path, hash_split="all")
        if path.suffix.lower() in (".yaml", ".yml") and "yolo" in formats:
            return _yolo_yaml(path, split)
        raise DatasetError(f"{path} is not a data set: give a data set folder, a COCO .json or a YOLO data.yaml")
    source = _find_in_folder(path, split, formats)
    if source is None:
        source = _find_in_split_folder(path, split, formats)
    if source is None:
        looked_for = "; ".join(LOOKED_FOR[f] for f in formats)
        raise DatasetError(f"{path} is not a known data set layout{'' if format is None else f' for {format}'}: "
                           f"looked for {looked_for}, or train/ + val/ folders holding one of them"
                           + _layouts_below(path, formats))
    return source


# --- layouts inside one folder ---------------------------------------------------------------------------------


def _find_in_folder(root: Path, split: str, formats: tuple[str, ...]) -> Source | None:
    """The first layout of ``formats`` found directly in ``root``, or None."""
    if "yolo" in formats:
        data_yaml = _yolo_yaml_file(root)
        if data_yaml is not None:
            return _yolo_yaml(data_yaml, split)
    if "voc" in formats and (root / "Annotations").is_dir() and (root / "ImageSets" / "Main").is_dir():
        return _voc_devkit(root, split)
    if "coco" in formats:
        coco = _coco_split_file(root, split)
        if coco is not None:
            return coco
    image_dir = _child(root, IMAGE_FOLDERS) or root
    if "voc" in formats:
        annotation_dir = next((d for d in (_child(root, VOC_FOLDERS), image_dir, root)
                               if d is not None and any(d.glob("*.xml"))), None)
        if annotation_dir is not None:
            if annotation_dir == image_dir:
                kind = "XML beside the images, as LabelImg saves"
            elif image_dir == root:
                kind = f"XML in {annotation_dir.name}/"
            else:
                kind = f"{image_dir.name}/ + {annotation_dir.name}/"
            stems = tuple(sorted(p.stem for p in annotation_dir.glob("*.xml")))
            return VocSource(layout=f"Pascal VOC ({kind})", annotation_dir=annotation_dir, image_dir=image_dir,
                             stems=stems, hash_split=split, description=f"{root} [{split}]")
    if "yolo" in formats:
        yolo = _yolo_folders(root, image_dir, split)
        if yolo is not None:
            return yolo
    if "coco" in formats:  # last: a YOLO or VOC export may carry a .json of notes
        return _coco_single_file(root, split)
    return None


def _find_in_split_folder(root: Path, split: str, formats: tuple[str, ...]) -> Source | None:
    """A layout inside the split's own folder (``train/``, ``valid/``, ...), or None when there are none."""
    folders = _split_folders(root)
    if not folders:
        return None
    if split not in folders:
        raise DatasetError(f"{root} has no split '{split}' (it has: {', '.join(sorted(folders))})")
    source = _find_in_folder(folders[split], "all", formats)
    if source is None:
        return None
    # The folder is the split: its source takes every file (hash_split "all", as found above).
    layout, description = f"{source.layout} in split folders", f"{root} [{split}]"
    if isinstance(source, VocSource):
        return replace(source, layout=layout, description=description)
    if isinstance(source, YoloSource):
        return replace(source, layout=layout, description=description,
                       class_names=source.class_names or _yolo_names_file(root))
    return replace(source, layout=layout)


def _split_folders(root: Path) -> dict[str, Path]:
    """Split name -> folder, for the subfolders of ``root`` named like splits (train/, valid/, ...)."""
    children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    folders: dict[str, Path] = {}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            if alias in children:
                folders.setdefault(split, children[alias])
    return folders


def _layouts_below(path: Path, formats: tuple[str, ...]) -> str:
    inner = []
    for child in sorted(p for p in path.iterdir() if p.is_dir()):
        try:
            if _find_in_folder(child, "all", formats) is not None:
                inner.append(child.name)
        except DatasetError:
            inner.append(child.name)
    return f" (data sets found inside: {', '.join(inner)}; give one of them)" if inner else ""


# --- Pascal VOC ------------------------------------------------------------------------------------------------


def _voc_devkit(root: Path, split: str) -> VocSource:
    main = root / "ImageSets" / "Main"
    description = f"{root} [{split}]"
    layout = "Pascal VOC (VOCdevkit)"
    if split == "all":
        return VocSource(layout=layout, annotation_dir=root / "Annotations", image_dir=root / "JPEGImages",
                         stems=None, hash_split="all", description=description)
    split_file = main / f"{split}.txt"
    if not split_file.is_file():
        splits = sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem)  # not the per-class files
        raise DatasetError(f"{root} has no split '{split}' (it has: {', '.join(splits) or 'none'})")
    stems = tuple(line.split()[0] for line in split_file.read_text().splitlines() if line.strip())
    return VocSource(layout=layout, annotation_dir=root / "Annotations", image_dir=root / "JPEGImages",
                     stems=stems, hash_split="all", description=description)


# --- COCO ------------------------------------------------------------------------------------------------------


def _coco_split_file(root: Path, split: str) -> CocoSource | None:
    split_file = root / "annotations" / f"instances_{split}.json"
    if split_file.is_file():
        return CocoSource(layout="COCO instances JSON (annotations/instances_{split}.json)",
                          annotation_file=split_file, hash_split="all")
    split_files = sorted(p for p in (root / "annotations").glob("instances_*.json")
                         if p.stem not in COCO_UNSPLIT_NAMES)
    if split_files:
        splits = [p.stem.removeprefix("instances_") for p in split_files]
        raise DatasetError(f"{root} has no split '{split}' (it has: {', '.join(splits)})")
    return None


def _coco_single_file(root: Path, split: str) -> CocoSource | None:
    unsplit = sorted(p for folder in (root, root / "annotations") for p in folder.glob("*.json"))
    if len(unsplit) == 1:
        return CocoSource(layout=f"COCO instances JSON ({unsplit[0].relative_to(root)})",
                          annotation_file=unsplit[0], hash_split=split)
    return None


# --- YOLO ------------------------------------------------------------------------------------------------------


def _yolo_yaml_file(root: Path) -> Path | None:
    """The folder's YOLO data.yaml (any .yaml with ``names`` and a ``train`` or ``val`` entry), or None."""
    for candidate in sorted(root.glob("*.y*ml"), key=lambda p: (p.stem != "data", p.name)):
        try:
            content = yaml.safe_load(candidate.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(content, dict) and "names" in content and ("train" in content or "val" in content):
            return candidate
    return None


def _yolo_yaml(data_yaml: Path, split: str) -> YoloSource:
    try:
        content = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DatasetError(f"cannot read {data_yaml}: {error_line(exc)}") from None
    if not isinstance(content, dict) or "names" not in content:
        raise DatasetError(f"{data_yaml} is not a YOLO data.yaml (it needs 'names' and 'train'/'val' paths)")
    names = _yolo_names(content["names"], data_yaml)
    entries = {key: content[key] for key in ("train", "val", "test") if content.get(key)}
    if split == "all":
        wanted = list(entries.values())
    else:
        key = next((k for k, aliases in SPLIT_ALIASES.items() if split in aliases and k in entries), None)
        if key is None:
            raise DatasetError(f"{data_yaml} has no split '{split}' (it has: {', '.join(entries) or 'none'})")
        wanted = [entries[key]]
    items = [str(item) for entry in wanted for item in (entry if isinstance(entry, list) else [entry])]
    base = _yolo_base(data_yaml, content.get("path"), items)
    images: dict[Path, Path] = {}
    for item in items:
        for image in _yolo_images(base, item, data_yaml):
            images.setdefault(image, _ultralytics_label_path(image))
    return YoloSource(layout=f"YOLO ({data_yaml.name})", images=tuple(images.items()), class_names=names,
                      hash_split="all", description=f"{data_yaml} [{split}]")


def _yolo_names(names, data_yaml: Path) -> tuple[str, ...]:
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


def _yolo_base(data_yaml: Path, written: object, items: list[str]) -> Path:
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
        if all(_yolo_entry(base, item).exists() for item in items):
            return base
    missing = next(item for item in items if not _yolo_entry(candidates[-1][0], item).exists())
    looked = "; ".join(f"{_yolo_entry(base, missing)} ({rule})" for base, rule in candidates)
    raise DatasetError(f"{data_yaml}: {missing} not found (looked in {looked})")


def _yolo_entry(base: Path, item: str) -> Path:
    """Where a ``train``/``val``/``test`` entry points, as Ultralytics finds it."""
    path = (base / item).resolve()
    if not path.exists() and item.startswith("../"):  # Roboflow writes ../train/images beside the yaml
        path = (base / item[3:]).resolve()
    return path


def _yolo_images(base: Path, item: str, data_yaml: Path) -> list[Path]:
    """The images of one ``train``/``val``/``test`` entry: a folder (searched recursively) or a .txt list."""
    path = _yolo_entry(base, item)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
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


def _yolo_folders(root: Path, image_dir: Path, split: str) -> YoloSource | None:
    """images/ + labels/ (optionally with split subfolders on both sides), or .txt beside the images."""
    label_dir = _child(root, YOLO_FOLDERS)
    if label_dir is not None and any(p.suffix == ".txt" and p.name not in YOLO_NAMES_FILES
                                     for p in label_dir.rglob("*.txt")):
        kind = f"{image_dir.name}/ + {label_dir.name}/"
    elif _has_labels_beside(image_dir):
        label_dir, kind = image_dir, "labels beside the images"
    else:
        return None
    names = _yolo_names_file(root, image_dir, label_dir)
    splits = _split_folders(image_dir) if image_dir != root else {}
    description = f"{root} [{split}]"
    if splits:  # images/train, images/val with labels/train, labels/val
        chosen = list(splits.values()) if split == "all" else [splits.get(split)]
        if chosen[0] is None:
            raise DatasetError(f"{root} has no split '{split}' (it has: {', '.join(sorted(splits))})")
        images, hash_split = [p for folder in chosen for p in _image_files(folder)], "all"
    else:
        images, hash_split = _image_files(image_dir), split
    pairs = tuple((image, (label_dir / image.relative_to(image_dir)).with_suffix(".txt")) for image in images)
    return YoloSource(layout=f"YOLO ({kind})", images=pairs, class_names=names, hash_split=hash_split,
                      description=description)


def _yolo_names_file(*folders: Path) -> tuple[str, ...] | None:
    for folder in folders:
        for name in YOLO_NAMES_FILES:
            if (folder / name).is_file():
                return tuple(line.strip() for line in (folder / name).read_text().splitlines() if line.strip())
    return None


# --- shared ----------------------------------------------------------------------------------------------------


def _child(root: Path, names: tuple[str, ...]) -> Path | None:
    """The first subfolder of ``root`` with one of ``names`` (any capitalisation), in the order of ``names``."""
    children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    return next((children[name] for name in names if name in children), None)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _has_labels_beside(folder: Path) -> bool:
    """Whether some image of the folder has a .txt of the same stem beside it."""
    stems = {p.stem for p in folder.glob("*.txt")}
    return any(p.stem in stems for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)

