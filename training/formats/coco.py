"""COCO instances JSON: ``images``, ``categories`` and ``annotations`` in one file.

Layouts: the file itself; ``annotations/instances_{split}.json``; one other .json in the folder or in
``annotations/`` (Roboflow's ``_annotations.coco.json``, Label Studio's ``result.json``, CVAT's
``instances_default.json``), whose images are split by content.

``bbox`` [x, y, w, h] becomes ``(x, y, x + w, y + h)``; ``w <= 0`` or ``h <= 0`` is zero-size. ``iscrowd``
objects are the difficult ones. Category ids, sorted, become labels 1..K. Ids are read as tools write them: a
whole number or its digits in a text ("3" is 3), gaps allowed; image ids may be any text, and then every image
is numbered by its position in the file. A category that no annotation uses and that is the supercategory of
others (Roboflow's id 0) is not a class. An image or category without a usable id, or an id given twice, stops
the run with a ``DatasetError`` naming the file and the entry: the annotations could not be matched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from training.data_format import (
    AnnotatedImage,
    AnnotatedObject,
    Annotations,
    DataFile,
    DataFormat,
    DatasetError,
    Finder,
    Source,
    four_numbers,
    int_or_zero,
)

# COCO files named instances_{split}.json belong to that split; CVAT names its only file instances_default.json.
UNSPLIT_NAMES = ("instances_default",)


@dataclass(frozen=True, kw_only=True)
class CocoSource(Source):
    """A COCO instances JSON.

    Attributes:
        image_root: the folder that ``file_name`` is relative to; None: the first of json_dir/../JPEGImages,
            json_dir/../images, json_dir/images and json_dir that holds the images.
    """

    annotation_file: Path
    image_root: Path | None = None

    def read(self, class_names: Sequence[str] | None) -> Annotations:
        coco = _read_json(self.annotation_file)
        image_ids = _image_ids(self.annotation_file, coco["images"])
        root = self.image_root or _find_image_root(self.annotation_file, coco["images"])
        category_names, unused = _categories(self.annotation_file, coco)
        # Whole-number ids are COCO's image ids; when some are texts, every image is numbered by its position.
        numbered = all(isinstance(image_id, int) for image_id in image_ids)
        images: dict[int | str, AnnotatedImage] = {}
        for position, (image_id, image) in enumerate(zip(image_ids, coco["images"]), start=1):
            file_name = str(image.get("file_name", ""))
            images[image_id] = AnnotatedImage(
                name=file_name or f"image id {image_id}", image_path=root / file_name if file_name else None,
                image_id=image_id if numbered else position, width=int_or_zero(image.get("width")),
                height=int_or_zero(image.get("height")))
        orphans = 0
        for annotation in coco["annotations"]:
            image = images.get(_coco_id(annotation.get("image_id"))) if isinstance(annotation, dict) else None
            if image is None:
                orphans += 1
                continue
            name = category_names.get(_coco_id(annotation.get("category_id")))
            if name is None:
                image.unknown_category_objects += 1
                continue
            try:
                x, y, width, height = four_numbers(annotation.get("bbox"))
            except (TypeError, ValueError):
                image.malformed_objects += 1
                continue
            box = (x, y, x + width, y + height) if width > 0 and height > 0 else None
            image.objects.append(AnnotatedObject(name=name, box=box, difficult=bool(annotation.get("iscrowd", 0))))
        return Annotations(images=list(images.values()), class_names=list(dict.fromkeys(category_names.values())),
                           description=f"{self.description} (images in {root})", orphan_annotations=orphans,
                           unused_supercategories=unused)

    def in_split_folder(self, root: Path, split: str) -> Source:
        # Messages keep naming the JSON file, which names its split folder.
        return replace(self, layout=f"{self.layout} in split folders")


def coco_file(path: Path, split: str = "all", *, layout: str = "COCO instances JSON",
              image_root: Path | None = None) -> CocoSource:
    """A COCO file's source; ``split`` other than "all" takes that part of its images by the content split."""
    description = f"{path}{'' if split == 'all' else f' [{split}]'}"
    return CocoSource(layout=layout, description=description, hash_split=split, annotation_file=path,
                      image_root=image_root)


def open_file(path: Path, split: str) -> CocoSource:
    """A COCO file given as the data set: every image of it, whatever ``split`` (the file is a split)."""
    return coco_file(path)


def find_split_file(root: Path, split: str) -> CocoSource | None:
    """``annotations/instances_{split}.json``."""
    split_file = root / "annotations" / f"instances_{split}.json"
    if split_file.is_file():
        return coco_file(split_file, layout="COCO instances JSON (annotations/instances_{split}.json)")
    split_files = sorted(p for p in (root / "annotations").glob("instances_*.json") if p.stem not in UNSPLIT_NAMES)
    if split_files:
        splits = [p.stem.removeprefix("instances_") for p in split_files]
        raise DatasetError(f"{root} has no split '{split}' (it has: {', '.join(splits)})")
    return None


def find_single_file(root: Path, split: str) -> CocoSource | None:
    """The one .json of the folder or of its ``annotations/``; ranked last, as a YOLO or VOC export may carry a
    .json of notes."""
    found = sorted(p for folder in (root, root / "annotations") for p in folder.glob("*.json"))
    if len(found) == 1:
        return coco_file(found[0], split, layout=f"COCO instances JSON ({found[0].relative_to(root)})")
    return None


FORMAT = DataFormat(
    looked_for="annotations/instances_{split}.json or one COCO .json (COCO)",
    finders=(Finder(rank=30, find=find_split_file), Finder(rank=60, find=find_single_file)),
    data_file=DataFile(suffixes=(".json",), kind="a COCO .json", open=open_file),
)


# --- reading ---------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
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


def _image_ids(path: Path, images: list) -> list[int | str]:
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


def _categories(path: Path, coco: dict) -> tuple[dict[int, str], list[str]]:
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


def _find_image_root(annotation_file: Path, images: list) -> Path:
    folder = annotation_file.parent
    candidates = [folder.parent / "JPEGImages", folder.parent / "images", folder / "images", folder]
    sample = [str(image.get("file_name", "")) for image in images[:20]]
    for candidate in candidates:
        if any(name and (candidate / name).is_file() for name in sample):
            return candidate
    return next(c for c in candidates if c.is_dir())  # the images are missing: reported by name later
