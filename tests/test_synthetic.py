"""The generated data set: deterministic, 22 distinct classes, VOC and COCO forms that agree."""

import json
import random
import hashlib

from PIL import Image

from training.datasets import open_dataset
from training.synthetic import CLASS_NAMES, CLASS_SPECS, COLORS, SIDE_RANGE, render_image, write_dataset


def test_22_distinct_classes_with_readable_names():
    assert len(CLASS_NAMES) == 22
    assert len(set(CLASS_NAMES)) == 22
    assert all(len(name.split()) == 2 for name in CLASS_NAMES)  # "colour shape", e.g. "red circle"


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    def digest(root):
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())).hexdigest()

    a = write_dataset(tmp_path / "a", counts={"train": 3, "test": 2}, seed=5)
    b = write_dataset(tmp_path / "b", counts={"train": 3, "test": 2}, seed=5)
    c = write_dataset(tmp_path / "c", counts={"train": 3, "test": 2}, seed=6)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_growing_train_split_keeps_test_split(tmp_path):
    small = write_dataset(tmp_path / "small", counts={"train": 2, "test": 3}, seed=1)
    large = write_dataset(tmp_path / "large", counts={"train": 9, "test": 3}, seed=1)
    for n in range(3):
        name = f"JPEGImages/test_{n:05d}.jpg"
        assert (small / name).read_bytes() == (large / name).read_bytes()


def test_objects_are_several_per_image_inside_and_not_overlapping():
    rng = random.Random(0)
    counts = []
    for _ in range(50):
        image, objects = render_image(rng)
        counts.append(len(objects))
        for label, (x1, y1, x2, y2) in objects:
            assert 0 <= label < 22
            assert 0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height
            assert x2 - x1 >= 10 and y2 - y1 >= 10
    assert min(counts) >= 1 and max(counts) >= 4 and sum(counts) / len(counts) >= 2.5


def test_shapes_are_drawn_in_their_class_colour_inside_their_box():
    rng = random.Random(3)
    checked = 0
    for _ in range(20):
        image, objects = render_image(rng)
        for label, (x1, y1, x2, y2) in objects:
            color_name, shape = CLASS_SPECS[label]
            if shape not in ("circle", "square", "hexagon", "diamond", "cross", "star"):
                continue  # rings, moons, hearts and arrows may leave the centre of their box empty
            centre = image.getpixel(((x1 + x2) // 2, (y1 + y2) // 2))
            assert all(abs(a - b) <= 25 for a, b in zip(centre, COLORS[color_name])), (label, centre)
            checked += 1
    assert checked >= 20


def test_voc_and_coco_forms_describe_the_same_objects(tmp_path):
    root = write_dataset(tmp_path / "d", counts={"train": 6, "val": 2, "test": 2}, seed=2)
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in coco["categories"]] == CLASS_NAMES
    voc = open_dataset(root, "train", class_names=CLASS_NAMES)
    coco_set = open_dataset(root / "annotations" / "instances_train.json", "train")
    assert coco_set.class_names == CLASS_NAMES
    assert len(voc) == len(coco_set) == 6
    for i in range(6):
        _, voc_target = voc[i]
        _, coco_target = coco_set[i]
        assert voc_target["labels"].tolist() == coco_target["labels"].tolist()
        assert (voc_target["boxes"] - coco_target["boxes"]).abs().max() <= 1.0
    sizes = {(entry["width"], entry["height"]) for entry in coco["images"]}
    for entry in coco["images"]:  # varied sizes (long side 240-800 px, aspect ratio up to 2:1), as recorded
        with Image.open(root / "JPEGImages" / entry["file_name"]) as image:
            assert image.size == (entry["width"], entry["height"])
        assert SIDE_RANGE[0] <= max(image.size) <= SIDE_RANGE[1] and max(image.size) <= 2 * min(image.size) + 1
    assert len(sizes) > 1


def test_a_fixed_size_data_set_and_objects_scaled_with_the_image(tmp_path):
    root = write_dataset(tmp_path / "fixed", counts={"train": 2}, seed=3, size=(320, 320))
    with Image.open(root / "JPEGImages" / "train_00000.jpg") as image:
        assert image.size == (320, 320)
    for width, height in ((320, 320), (960, 640)):
        _, objects = render_image(random.Random(4), width=width, height=height)
        sides = [max(x2 - x1, y2 - y1) for _, (x1, y1, x2, y2) in objects]
        assert max(sides) <= 0.3 * min(width, height) + 1 and min(sides) >= 0.06 * min(width, height)
