"""Writes one set of labelled images in each layout training/layouts.py reads, as labelling tools export them.

Layouts with splits of their own get the images that the content split of a layout without splits would put
there, so every layout of one set holds the same train and val images (and none of the content split's test).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml
from PIL import Image, ImageDraw

from project import RACCOON
from tests.test_datasets import open_with_warnings, write_voc_xml
from training.datasets import content_split


@dataclass(frozen=True)
class Sample:
    """One labelled image: boxes in pixels (x1, y1, x2, y2, whole numbers), one class name per box."""

    image: Path
    width: int
    height: int
    boxes: list[tuple[float, float, float, float]]
    names: list[str]

    @property
    def split(self) -> str:
        return content_split(self.image, self.image.name)


def raccoon_samples(*, count: int, val: int) -> list[Sample]:
    """The first ``count - val`` training and ``val`` validation photos of the raccoon set (by the content split)."""
    dataset, _ = open_with_warnings(RACCOON, "all")
    samples = [Sample(image=r.path, width=r.width, height=r.height, boxes=list(r.boxes),
                      names=[dataset.class_names[label - 1] for label in r.labels]) for r in dataset.records]
    train = [s for s in samples if s.split == "train"][: count - val]
    return train + [s for s in samples if s.split == "val"][:val]


def generated_samples(folder: Path, *, train: int = 5, val: int = 2) -> list[Sample]:
    """Coloured rectangles of two classes ("box" red, "cross" blue) on grey, one image without objects, one PNG;
    images that the content split puts into a split no longer wanted (or into test) are not kept."""
    samples: list[Sample] = []
    wanted = {"train": train, "val": val}
    number = 0
    while any(wanted.values()):
        number += 1
        width, height = 120 + 8 * number, 90 + 4 * number
        image = Image.new("RGB", (width, height), (128, 128, 128))
        draw = ImageDraw.Draw(image)
        boxes, names = [], []
        if number % 4:  # every fourth image is a negative
            boxes = [(10.0, 12.0, 50.0, 60.0), (60.0, 20.0, 100.0 + number, 80.0)]
            names = ["box", "cross"] if number % 2 else ["cross", "box"]
            for box, name in zip(boxes, names):
                draw.rectangle(box, fill=(220, 30, 30) if name == "box" else (30, 30, 220))
        path = folder / f"shapes-{number}.{'png' if number == 3 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        sample = Sample(image=path, width=width, height=height, boxes=boxes, names=names)
        if not wanted.get(sample.split):
            path.unlink()
            continue
        wanted[sample.split] -= 1
        samples.append(sample)
    return samples


# --- writers: each writes the samples under root and returns what to give training's --data ----------------------


def _copy(sample: Sample, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(sample.image, folder / sample.image.name))


def _voc(sample: Sample, annotation_folder: Path) -> None:
    objects = [(name, (round(x1) + 1, round(y1) + 1, round(x2), round(y2)), False)  # VOC is 1-based
               for (x1, y1, x2, y2), name in zip(sample.boxes, sample.names)]
    write_voc_xml(annotation_folder / f"{sample.image.stem}.xml", sample.image.name, (sample.width, sample.height),
                  objects)


def _coco(samples: list[Sample], classes: list[str], json_file: Path, prefix: str = "") -> None:
    images, annotations = [], []
    for image_id, sample in enumerate(samples, start=1):
        images.append({"id": image_id, "file_name": prefix + sample.image.name, "width": sample.width,
                       "height": sample.height})
        for (x1, y1, x2, y2), name in zip(sample.boxes, sample.names):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0,
                                "category_id": classes.index(name) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1)})
    categories = [{"id": number, "name": name} for number, name in enumerate(classes, start=1)]
    json_file.parent.mkdir(parents=True, exist_ok=True)
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def _yolo(sample: Sample, classes: list[str], label_file: Path) -> None:
    lines = []
    for (x1, y1, x2, y2), name in zip(sample.boxes, sample.names):
        w, h = sample.width, sample.height
        lines.append(f"{classes.index(name)} {(x1 + x2) / 2 / w:.7f} {(y1 + y2) / 2 / h:.7f} "
                     f"{(x2 - x1) / w:.7f} {(y2 - y1) / h:.7f}")
    label_file.parent.mkdir(parents=True, exist_ok=True)
    label_file.write_text("".join(line + "\n" for line in lines))


def voc_devkit(samples, classes, root):
    for sample in samples:
        _copy(sample, root / "JPEGImages")
        _voc(sample, root / "Annotations")
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for split in ("train", "val"):
        (main / f"{split}.txt").write_text("".join(f"{s.image.stem}\n" for s in samples if s.split == split))
    return root


def voc_flat(samples, classes, root, image_folder="images", annotation_folder="annotations"):
    for sample in samples:
        _copy(sample, root / image_folder)
        _voc(sample, root / annotation_folder)
    return root


def voc_beside(samples, classes, root):  # LabelImg's default
    return voc_flat(samples, classes, root, ".", ".")


def voc_split_folders(samples, classes, root):  # Roboflow's Pascal VOC export
    for sample in samples:
        folder = root / ("valid" if sample.split == "val" else "train")
        _copy(sample, folder)
        _voc(sample, folder)
    return root


def coco_split_files(samples, classes, root):
    for sample in samples:
        _copy(sample, root / "images")
    for split in ("train", "val"):
        _coco([s for s in samples if s.split == split], classes, root / "annotations" / f"instances_{split}.json")
    return root


def coco_single_file(samples, classes, root):  # Label Studio's COCO export
    for sample in samples:
        _copy(sample, root / "images")
    _coco(samples, classes, root / "result.json", prefix="images/")
    return root


def coco_split_folders(samples, classes, root):  # Roboflow's COCO export
    for split, folder in (("train", "train"), ("val", "valid")):
        chosen = [s for s in samples if s.split == split]
        for sample in chosen:
            _copy(sample, root / folder)
        _coco(chosen, classes, root / folder / "_annotations.coco.json")
    return root


def yolo_ultralytics(samples, classes, root):  # Ultralytics / CVAT: data.yaml, images/train, labels/train
    for sample in samples:
        _copy(sample, root / "images" / sample.split)
        _yolo(sample, classes, root / "labels" / sample.split / f"{sample.image.stem}.txt")
    (root / "data.yaml").write_text(yaml.safe_dump(
        {"path": ".", "train": "images/train", "val": "images/val", "names": dict(enumerate(classes))}))
    return root


def yolo_roboflow(samples, classes, root):  # Roboflow: ../train/images paths in data.yaml
    for sample in samples:
        folder = root / ("valid" if sample.split == "val" else "train")
        _copy(sample, folder / "images")
        _yolo(sample, classes, folder / "labels" / f"{sample.image.stem}.txt")
    (root / "data.yaml").write_text(yaml.safe_dump(
        {"train": "../train/images", "val": "../valid/images", "nc": len(classes), "names": classes}))
    return root


def yolo_flat(samples, classes, root):  # Label Studio's YOLO export
    for sample in samples:
        _copy(sample, root / "images")
        _yolo(sample, classes, root / "labels" / f"{sample.image.stem}.txt")
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    (root / "notes.json").write_text(json.dumps({"categories": [{"id": 0, "name": classes[0]}], "info": {}}))
    return root


def yolo_beside(samples, classes, root):  # LabelImg's YOLO mode
    for sample in samples:
        _copy(sample, root)
        _yolo(sample, classes, root / f"{sample.image.stem}.txt")
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    return root


def yolo_split_subfolders(samples, classes, root):  # images/train + labels/train without a data.yaml
    for sample in samples:
        _copy(sample, root / "images" / sample.split)
        _yolo(sample, classes, root / "labels" / sample.split / f"{sample.image.stem}.txt")
    (root / "labels" / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    return root


# layout -> (writer, what training/layouts.py reports finding)
LAYOUTS: dict[str, tuple[Callable[..., Path], str]] = {
    "voc-devkit": (voc_devkit, "Pascal VOC (VOCdevkit)"),
    "voc-images-annotations": (voc_flat, "Pascal VOC (images/ + annotations/)"),
    "voc-image-label": (lambda s, c, r: voc_flat(s, c, r, "image", "label"), "Pascal VOC (image/ + label/)"),
    "voc-jpegimages-no-imagesets": (lambda s, c, r: voc_flat(s, c, r, "JPEGImages", "Annotations"),
                                    "Pascal VOC (JPEGImages/ + Annotations/)"),
    "voc-beside-labelimg": (voc_beside, "Pascal VOC (XML beside the images, as LabelImg saves)"),
    "voc-split-folders-roboflow": (voc_split_folders, "LabelImg saves) in split folders"),
    "coco-split-files": (coco_split_files, "COCO instances JSON (annotations/instances_{split}.json)"),
    "coco-single-file-label-studio": (coco_single_file, "COCO instances JSON (result.json)"),
    "coco-split-folders-roboflow": (coco_split_folders, "COCO instances JSON (_annotations.coco.json) in split"),
    "yolo-data-yaml-ultralytics": (yolo_ultralytics, "YOLO (data.yaml)"),
    "yolo-data-yaml-roboflow": (yolo_roboflow, "YOLO (data.yaml)"),
    "yolo-images-labels-label-studio": (yolo_flat, "YOLO (images/ + labels/)"),
    "yolo-beside-labelimg": (yolo_beside, "YOLO (labels beside the images)"),
    "yolo-split-subfolders": (yolo_split_subfolders, "YOLO (images/ + labels/)"),
}


def write_layout(layout: str, samples: list[Sample], classes: list[str], root: Path) -> Path:
    """Writes ``samples`` under ``root`` in ``layout`` (a key of LAYOUTS); returns what to give --data."""
    root.mkdir(parents=True, exist_ok=True)
    return LAYOUTS[layout][0](samples, classes, root)
