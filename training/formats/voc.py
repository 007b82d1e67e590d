"""Pascal VOC XML: one ``<annotation>`` file per image.

Layouts: a VOCdevkit (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/{split}.txt``); flat, an image folder
(``images/``, ``image/``, ``JPEGImages/``, ``imgs/``, ``img/``) and XML in an annotation folder
(``annotations/``, ``Annotations/``, ``labels/``, ``label/``, ``xml/``), or XML beside the images in one folder
(LabelImg's default).

VOC coordinates are 1-based and inclusive (``xmin=1`` is the first pixel column), so a box becomes
``(xmin - 1, ymin - 1, xmax, ymax)`` in pixels; one with ``xmax <= xmin`` or ``ymax <= ymin`` is zero-size.
Class names are the sorted object names of all the folder's XML files, so every split of one folder gets the
same list; an image's id is the position of its XML file among them, the same in every split.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from training.data_format import (
    IMAGE_EXTENSIONS,
    AnnotatedImage,
    AnnotatedObject,
    Annotations,
    DataFormat,
    DatasetError,
    Finder,
    Source,
    child_folder,
    four_numbers,
    image_folder,
    int_or_zero,
)

ANNOTATION_FOLDERS = ("annotations", "annotation", "labels", "label", "xml", "xmls")
_BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True, kw_only=True)
class VocSource(Source):
    """Pascal VOC XML files of one split.

    Attributes:
        annotation_dir / image_dir: the folders (the same one when the XML lies beside the images).
        stems: the split's annotation file stems, in order; None means every XML file of the folder.
    """

    annotation_dir: Path
    image_dir: Path
    stems: tuple[str, ...] | None

    def read(self, class_names: Sequence[str] | None) -> Annotations:
        parsed = {path.stem: _parse_xml(path) for path in sorted(self.annotation_dir.glob("*.xml"))}
        image_index = _ImageIndex(self.image_dir)
        image_ids = {stem: number for number, stem in enumerate(parsed)}
        images = []
        for stem in parsed if self.stems is None else self.stems:
            annotation = parsed.get(stem)
            if isinstance(annotation, _VocAnnotation):
                images.append(annotation.image(image_index, stem, image_ids[stem]))
            else:  # the image is still found, so that the split by content places it as it places the others
                images.append(AnnotatedImage(name=f"{stem}.xml", image_path=image_index.find("", stem),
                                             image_id=image_ids.get(stem, -1),
                                             broken_annotation=f"{stem}.xml ({annotation or 'missing'})"))
        names = sorted({o.name for a in parsed.values() if isinstance(a, _VocAnnotation) for o in a.objects})
        return Annotations(images=images, class_names=names, description=self.description)


def find_devkit(root: Path, split: str) -> VocSource | None:
    """A VOCdevkit: ``Annotations/`` and ``ImageSets/Main/`` (whose {split}.txt lists the split's stems)."""
    main = root / "ImageSets" / "Main"
    if not ((root / "Annotations").is_dir() and main.is_dir()):
        return None
    folders = {"layout": "Pascal VOC (VOCdevkit)", "annotation_dir": root / "Annotations",
               "image_dir": root / "JPEGImages", "description": f"{root} [{split}]", "hash_split": "all"}
    if split == "all":
        return VocSource(stems=None, **folders)
    split_file = main / f"{split}.txt"
    if not split_file.is_file():
        splits = sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem)  # not the per-class files
        raise DatasetError(f"{root} has no split '{split}' (it has: {', '.join(splits) or 'none'})")
    stems = tuple(line.split()[0] for line in split_file.read_text().splitlines() if line.strip())
    return VocSource(stems=stems, **folders)


def find_flat(root: Path, split: str) -> VocSource | None:
    """XML files in an annotation folder, in the image folder, or in ``root``; all of them, split by content."""
    image_dir = image_folder(root)
    annotation_dir = next((d for d in (child_folder(root, ANNOTATION_FOLDERS), image_dir, root)
                           if d is not None and any(d.glob("*.xml"))), None)
    if annotation_dir is None:
        return None
    if annotation_dir == image_dir:
        kind = "XML beside the images, as LabelImg saves"
    elif image_dir == root:
        kind = f"XML in {annotation_dir.name}/"
    else:
        kind = f"{image_dir.name}/ + {annotation_dir.name}/"
    stems = tuple(sorted(p.stem for p in annotation_dir.glob("*.xml")))
    return VocSource(layout=f"Pascal VOC ({kind})", annotation_dir=annotation_dir, image_dir=image_dir,
                     stems=stems, hash_split=split, description=f"{root} [{split}]")


FORMAT = DataFormat(
    looked_for="Annotations/ + ImageSets/Main/{split}.txt (VOCdevkit); images/ + annotations/ or labels/ with "
               ".xml, or .xml beside the images (Pascal VOC)",
    finders=(Finder(rank=20, find=find_devkit), Finder(rank=40, find=find_flat)),
)


# --- reading ---------------------------------------------------------------------------------------------------


@dataclass
class _VocAnnotation:
    file_name: str
    width: int
    height: int
    objects: list[AnnotatedObject]
    malformed_objects: int

    def image(self, image_index: _ImageIndex, stem: str, image_id: int) -> AnnotatedImage:
        return AnnotatedImage(
            name=self.file_name or stem, image_path=image_index.find(self.file_name, stem), image_id=image_id,
            width=self.width, height=self.height, objects=self.objects, malformed_objects=self.malformed_objects,
        )


def _parse_xml(path: Path) -> _VocAnnotation | str:
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
            xmin, ymin, xmax, ymax = four_numbers(element.findtext(f"bndbox/{tag}") for tag in _BOX_TAGS)
        except (TypeError, ValueError):  # a coordinate missing or not a number
            name = ""
        if not name:
            malformed += 1
            continue
        box = (xmin - 1, ymin - 1, xmax, ymax) if xmax > xmin and ymax > ymin else None
        objects.append(AnnotatedObject(name=name, box=box,
                                       difficult=int_or_zero(element.findtext("difficult")) == 1))
    return _VocAnnotation(
        file_name=(root.findtext("filename") or "").strip(), width=int_or_zero(root.findtext("size/width")),
        height=int_or_zero(root.findtext("size/height")), objects=objects, malformed_objects=malformed,
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
