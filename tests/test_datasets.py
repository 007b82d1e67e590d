"""Data set loaders on real image files: messy VOC and COCO sets built here, and the real raccoon photos."""

from __future__ import annotations

import json
import pickle
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from PIL import Image

import training.datasets as datasets
from project import RACCOON
from tests.test_decode import malformed_exif_png
from training.augmentation import RandomHorizontalFlip
from training.datasets import DatasetError, DatasetWarning, content_split, open_dataset, read_dataset
from training.formats.coco import coco_file

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


# --- fixture helpers -------------------------------------------------------------------------------------------


def write_image(path: Path, image: Image.Image, fmt: str = "JPEG", **params) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **params)
    return path


def write_voc_xml(path: Path, file_name: str, size: tuple[int, int], objects=(), malformed: int = 0) -> Path:
    """``objects``: (name, (xmin, ymin, xmax, ymax), difficult) in VOC's 1-based inclusive coordinates."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = file_name
    size_element = ET.SubElement(root, "size")
    ET.SubElement(size_element, "width").text = str(size[0])
    ET.SubElement(size_element, "height").text = str(size[1])
    for name, box, difficult in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = "1" if difficult else "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bndbox, tag).text = str(value)
    for _ in range(malformed):
        ET.SubElement(ET.SubElement(root, "object"), "name").text = "cat"  # no bndbox
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path)
    return path


def rotated_photo() -> tuple[Image.Image, Image.Exif]:
    """A photo stored sideways with EXIF orientation 6; upright it is 40x60 with a red bottom third."""
    upright = Image.new("RGB", (40, 60), BLUE)
    upright.paste(RED, (0, 40, 40, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers turn it 90 degrees clockwise
    return upright.transpose(Image.Transpose.ROTATE_90), exif


def build_messy_flat_voc(root: Path) -> Path:
    """A flat images/ + annotations/ set with one of each real-world problem (see the expected counts below)."""
    images, annotations = root / "images", root / "annotations"
    rgb = Image.new("RGB", (100, 80), GREEN)
    write_image(images / "normal.jpg", rgb)
    write_voc_xml(annotations / "normal.xml", "normal.jpg", (100, 80),
                  [("cat", (11, 21, 50, 60), False), ("dog", (30, 30, 30, 40), False)])  # 2nd: zero width
    write_image(images / "outside.jpg", rgb)
    write_voc_xml(annotations / "outside.xml", "outside.jpg", (100, 80),
                  [("dog", (-10, 5, 120, 70), False), ("dog", (150, 10, 180, 40), False)])
    write_image(images / "nosize.jpg", Image.new("RGB", (64, 48), GREEN))
    write_voc_xml(annotations / "nosize.xml", "nosize.jpg", (0, 0), [("cat", (1, 1, 64, 48), False)])
    write_image(images / "wrongsize.jpg", Image.new("RGB", (50, 40), GREEN))
    write_voc_xml(annotations / "wrongsize.xml", "wrongsize.jpg", (200, 200), [("cat", (1, 1, 100, 100), False)])
    write_image(images / "lying.jpg", Image.new("RGBA", (30, 20), (0, 0, 255, 0)), "PNG")  # PNG named .jpg
    write_voc_xml(annotations / "lying.xml", "lying.jpg", (30, 20), [("dog", (1, 1, 10, 10), False)])
    write_image(images / "gray.jpg", Image.new("L", (32, 32), 90))
    write_voc_xml(annotations / "gray.xml", "gray.jpg", (32, 32), [("cat", (5, 5, 20, 20), False)])
    write_image(images / "cmyk.jpg", Image.new("CMYK", (32, 32), (0, 255, 255, 0)), quality=95)
    write_voc_xml(annotations / "cmyk.xml", "cmyk.jpg", (32, 32), [("cat", (5, 5, 20, 20), False)])
    stored, exif = rotated_photo()
    write_image(images / "rotated.jpg", stored, exif=exif, quality=95)
    write_voc_xml(annotations / "rotated.xml", "rotated.jpg", (40, 60), [("dog", (1, 41, 40, 60), False)])
    write_image(images / "difficult.jpg", rgb)
    write_voc_xml(annotations / "difficult.xml", "difficult.jpg", (100, 80),
                  [("cat", (1, 1, 40, 40), False), ("dog", (41, 41, 90, 80), True)], malformed=1)
    write_voc_xml(annotations / "missing.xml", "missing.jpg", (100, 80), [("cat", (1, 1, 10, 10), False)])
    (annotations / "broken.xml").write_text("<annotation><filename>broken.jpg</filename><object>")
    write_image(images / "broken.jpg", rgb)
    write_image(images / "negative.jpg", rgb)
    write_voc_xml(annotations / "negative.xml", "negative.jpg", (100, 80))
    palette = Image.new("P", (20, 20))
    palette.putpalette([0, 0, 255] * 256)
    write_image(images / "palette.png", palette, "PNG")  # the XML names a .jpg: found by its stem
    write_voc_xml(annotations / "palette.xml", "palette.jpg", (20, 20), [("cat", (1, 1, 20, 20), False)])
    (images / "garbage.jpg").write_text("this is not an image")
    write_voc_xml(annotations / "garbage.xml", "garbage.jpg", (10, 10), [("cat", (1, 1, 5, 5), False)])
    return root


def open_with_warnings(*args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = open_dataset(*args, **kwargs)
    return dataset, [str(w.message) for w in caught if issubclass(w.category, DatasetWarning)]


def by_name(dataset) -> dict[str, int]:
    return {dataset.image_path(i).name: i for i in range(len(dataset))}


# --- messy flat VOC --------------------------------------------------------------------------------------------


@pytest.fixture
def messy_voc(tmp_path) -> Path:
    return build_messy_flat_voc(tmp_path / "messy")


def test_messy_voc_for_training_counts_everything_in_one_warning(messy_voc):
    dataset, messages = open_with_warnings(messy_voc, "all")
    assert len(messages) == 1
    message = messages[0]
    assert message.startswith(f"{messy_voc} [all]: ")
    for part in [
        "1 image file missing (dropped): missing.jpg",
        "1 image unreadable (dropped): garbage.jpg (not_an_image)",
        "1 annotation unreadable (skipped): broken.xml (not valid XML",
        "1 malformed object skipped",
        "1 zero-size box dropped",
        "2 boxes clipped to the image",
        "1 box outside the image dropped",
        "2 image sizes taken from the image files",
        "1 difficult/crowd object left out of training",
    ]:
        assert part in message, part
    names = by_name(dataset)
    assert sorted(names) == sorted(["normal.jpg", "outside.jpg", "nosize.jpg", "wrongsize.jpg", "lying.jpg",
                                    "gray.jpg", "cmyk.jpg", "rotated.jpg", "difficult.jpg", "negative.jpg",
                                    "palette.png"])
    assert dataset.class_names == ["cat", "dog"]

    def target(name):
        return dataset[names[name]][1]

    assert target("normal.jpg")["boxes"].tolist() == [[10.0, 20.0, 50.0, 60.0]]
    assert target("normal.jpg")["labels"].tolist() == [1]
    assert target("outside.jpg")["boxes"].tolist() == [[0.0, 4.0, 100.0, 70.0]]
    assert target("outside.jpg")["labels"].tolist() == [2]
    assert target("nosize.jpg")["boxes"].tolist() == [[0.0, 0.0, 64.0, 48.0]]
    assert dataset.image_size(names["nosize.jpg"]) == (64, 48)
    assert target("wrongsize.jpg")["boxes"].tolist() == [[0.0, 0.0, 50.0, 40.0]]
    assert dataset.image_size(names["wrongsize.jpg"]) == (50, 40)
    assert target("difficult.jpg")["boxes"].tolist() == [[0.0, 0.0, 40.0, 40.0]]
    assert target("difficult.jpg")["difficult"].tolist() == [False]
    negative = target("negative.jpg")
    assert negative["boxes"].shape == (0, 4) and negative["labels"].shape == (0,)
    assert negative["boxes"].dtype == torch.float32 and negative["labels"].dtype == torch.int64


def test_every_image_mode_comes_back_as_rgb_in_0_1(messy_voc):
    dataset, _ = open_with_warnings(messy_voc, "all")
    names = by_name(dataset)
    for name, index in names.items():
        image, target = dataset[index]
        assert image.dtype == torch.float32 and image.shape[0] == 3, name
        assert 0.0 <= image.min() and image.max() <= 1.0, name
        assert (image.shape[2], image.shape[1]) == dataset.image_size(index), name
        assert target["image_id"] == dataset.records[index].image_id
    lying = dataset[names["lying.jpg"]][0]
    assert torch.equal(lying, torch.ones_like(lying))  # transparent PNG composited on white
    gray = dataset[names["gray.jpg"]][0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert abs(gray[0, 0, 0].item() - 90 / 255) < 0.02
    cmyk = dataset[names["cmyk.jpg"]][0][:, 16, 16]
    assert cmyk[0] > 0.9 and cmyk[1] < 0.1 and cmyk[2] < 0.1  # red
    palette = dataset[names["palette.png"]][0]
    assert palette[:, 10, 10].tolist() == [0.0, 0.0, 1.0]


def test_exif_rotated_photo_is_upright_and_boxes_are_in_the_upright_frame(messy_voc):
    dataset, _ = open_with_warnings(messy_voc, "all")
    index = by_name(dataset)["rotated.jpg"]
    image, target = dataset[index]
    assert image.shape == (3, 60, 40) and dataset.image_size(index) == (40, 60)
    assert target["boxes"].tolist() == [[0.0, 40.0, 40.0, 60.0]]
    x1, y1, x2, y2 = (int(v) for v in target["boxes"][0])
    inside = image[:, y1 + 2 : y2 - 2, x1 + 2 : x2 - 2]
    assert inside[0].min() > 0.85 and inside[2].max() < 0.15  # the box holds the red part


def build_malformed_exif_voc(root: Path) -> Path:
    """A flat VOC set of two photos, one a PNG whose EXIF block is malformed (Pillow's getexif() raises)."""
    write_image(root / "images" / "plain.jpg", Image.new("RGB", (60, 40), GREEN))
    write_voc_xml(root / "annotations" / "plain.xml", "plain.jpg", (60, 40), [("cat", (1, 1, 30, 20), False)])
    phone = root / "images" / "phone.png"
    phone.write_bytes(malformed_exif_png(Image.new("RGB", (60, 40), RED)))
    write_voc_xml(root / "annotations" / "phone.xml", "phone.png", (60, 40), [("cat", (11, 11, 50, 30), False)])
    return root


def test_a_photo_with_a_malformed_exif_block_loads_as_stored(tmp_path):
    dataset, messages = open_with_warnings(build_malformed_exif_voc(tmp_path / "exif"), "all")
    assert messages == [] and len(dataset) == 2
    index = by_name(dataset)["phone.png"]
    image, target = dataset[index]
    assert image.shape == (3, 40, 60) and dataset.image_size(index) == (60, 40)
    assert image[0].min() == 1.0 and target["boxes"].tolist() == [[10.0, 10.0, 50.0, 30.0]]


def test_evaluation_keeps_difficult_objects_marked(messy_voc):
    dataset, messages = open_with_warnings(messy_voc, "all", include_difficult=True)
    assert "difficult" not in messages[0]
    target = dataset[by_name(dataset)["difficult.jpg"]][1]
    assert target["boxes"].tolist() == [[0.0, 0.0, 40.0, 40.0], [40.0, 40.0, 90.0, 80.0]]
    assert target["labels"].tolist() == [1, 2]
    assert target["difficult"].tolist() == [False, True]


def test_flat_voc_splits_partition_the_images(messy_voc):
    everything, _ = open_with_warnings(messy_voc, "all")
    train, _ = open_with_warnings(messy_voc, "train")
    val, _ = open_with_warnings(messy_voc, "val")
    test, _ = open_with_warnings(messy_voc, "test")
    assert set(by_name(train)).isdisjoint(by_name(val)) and set(by_name(test)).isdisjoint(by_name(train))
    assert set(by_name(val)).isdisjoint(by_name(test))
    assert set(by_name(train)) | set(by_name(val)) | set(by_name(test)) == set(by_name(everything))
    assert train.class_names == val.class_names == test.class_names == ["cat", "dog"]


def test_a_split_is_chosen_by_the_files_bytes_so_copies_land_together(tmp_path):
    """Twenty photos, each also saved under a second name (with its own boxes): each pair lands in one split,
    which is the split of the photo's bytes whatever its name. A split by name would part most pairs."""
    root = tmp_path / "copies"
    for number in range(20):
        photo = write_image(root / "images" / f"photo-{number}.jpg", Image.new("RGB", (40 + number, 30), GREEN))
        (root / "images" / f"copy-of-{number}.jpg").write_bytes(photo.read_bytes())
        for stem in (f"photo-{number}", f"copy-of-{number}"):
            write_voc_xml(root / "annotations" / f"{stem}.xml", f"{stem}.jpg", (40 + number, 30),
                          [("cat", (1, 1, 20, 20), False)])
    found = {}
    for split in ("train", "val", "test"):
        try:
            found.update({name: split for name in by_name(open_dataset(root, split))})
        except DatasetError:  # no image of twenty happened to land in this split
            pass
    assert len(found) == 40
    for number in range(20):
        photo = root / "images" / f"photo-{number}.jpg"
        assert found[f"photo-{number}.jpg"] == found[f"copy-of-{number}.jpg"] == content_split(photo, "any name")
    assert {content_split(root / "images" / "photo-0.jpg", name) for name in ("a", "b", "c")} == \
        {found["photo-0.jpg"]}


def test_class_names_fix_the_order_and_must_cover_the_data(messy_voc):
    dataset, _ = open_with_warnings(messy_voc, "all", class_names=["dog", "cat", "bird"])
    assert dataset.class_names == ["dog", "cat", "bird"]
    assert dataset[by_name(dataset)["normal.jpg"]][1]["labels"].tolist() == [2]
    with pytest.raises(DatasetError, match=r"objects of classes not in the class list: dog \(class list: cat\)"):
        open_dataset(messy_voc, "all", class_names=["cat"])
    with pytest.raises(DatasetError, match="distinct"):
        open_dataset(messy_voc, "all", class_names=["cat", "dog", "cat"])


def test_transforms_are_applied_last(messy_voc):
    plain, _ = open_with_warnings(messy_voc, "all")
    flipped, _ = open_with_warnings(messy_voc, "all", transforms=RandomHorizontalFlip(p=1.0))
    index = by_name(plain)["normal.jpg"]
    image, target = flipped[index]
    assert target["boxes"].tolist() == [[50.0, 20.0, 90.0, 60.0]]
    assert torch.equal(image, plain[index][0].flip(-1))


def test_annotations_are_parsed_once_and_no_pixels_decoded_at_construction(messy_voc, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("decoded an image while building the data set")

    monkeypatch.setattr(datasets, "load_image_file", refuse)
    dataset, _ = open_with_warnings(messy_voc, "all")
    assert len(dataset) == 11
    with pytest.raises(AssertionError, match="decoded an image"):
        dataset[0]


def test_data_set_survives_pickling_for_loader_workers(messy_voc):
    dataset, _ = open_with_warnings(messy_voc, "all")
    copy = pickle.loads(pickle.dumps(dataset))
    assert len(copy) == len(dataset) and torch.equal(copy[3][1]["boxes"], dataset[3][1]["boxes"])


def test_image_that_breaks_after_construction_comes_back_as_unreadable(messy_voc):
    dataset, _ = open_with_warnings(messy_voc, "all")
    index = by_name(dataset)["normal.jpg"]
    data = dataset.image_path(index).read_bytes()
    dataset.image_path(index).write_bytes(data[: len(data) - 40])
    unreadable = dataset[index]
    assert isinstance(unreadable, datasets.UnreadableImage) and unreadable.path == dataset.image_path(index)
    assert "truncated" in unreadable.reason


# --- VOCdevkit layout ------------------------------------------------------------------------------------------


def build_devkit(root: Path) -> Path:
    image = Image.new("RGB", (64, 64), GREEN)
    for stem, objects in {
        "a": [("person", (1, 1, 32, 32), False)],
        "b": [("car", (10, 10, 40, 40), False), ("person", (2, 2, 8, 8), True)],
        "c": [("bus", (1, 1, 64, 64), False)],
    }.items():
        write_image(root / "JPEGImages" / f"{stem}.jpg", image)
        write_voc_xml(root / "Annotations" / f"{stem}.xml", f"{stem}.jpg", (64, 64), objects)
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("a\nb\nghost\n")
    (main / "val.txt").write_text("c\n\n")
    (main / "person_train.txt").write_text("a  1\nb -1\n")  # per-class files are not splits
    return root


def test_devkit_splits_share_class_names_and_image_ids(tmp_path):
    root = build_devkit(tmp_path / "VOC2007")
    train, messages = open_with_warnings(root, "train")
    assert messages == [f"{root} [train]: 1 annotation unreadable (skipped): ghost.xml (missing); "
                        "1 difficult/crowd object left out of training"]
    val, val_messages = open_with_warnings(root, "val", class_names=train.class_names, include_difficult=True)
    assert val_messages == []
    assert train.class_names == val.class_names == ["bus", "car", "person"]
    assert [train[i][1]["labels"].tolist() for i in range(2)] == [[3], [2]]
    assert [train[i][1]["image_id"] for i in range(2)] == [0, 1] and val[0][1]["image_id"] == 2
    assert val[0][1]["boxes"].tolist() == [[0.0, 0.0, 64.0, 64.0]] and val[0][1]["labels"].tolist() == [1]
    everything, _ = open_with_warnings(root, "all", include_difficult=True)
    assert len(everything) == 3 and everything[1][1]["difficult"].tolist() == [False, True]
    with pytest.raises(DatasetError, match=r"has no split 'test' \(it has: train, val\)"):
        open_dataset(root, "test")


def test_devkit_folder_given_one_level_too_high_gets_a_hint(tmp_path):
    build_devkit(tmp_path / "VOCdevkit" / "VOC2007")
    with pytest.raises(DatasetError, match=r"not a known data set layout.*inside: VOC2007"):
        open_dataset(tmp_path / "VOCdevkit")


# --- COCO ------------------------------------------------------------------------------------------------------


def build_coco(root: Path) -> Path:
    files = [("one.jpg", (100, 80), "JPEG"), ("two.png", (60, 60), "PNG"), ("three.jpg", (50, 50), "JPEG")]
    for name, size, fmt in files:
        write_image(root / "images" / name, Image.new("RGB", size, GREEN), fmt)
    write_image(root / "images" / "gray.jpg", Image.new("L", (40, 30), 200))
    coco = {
        "images": [
            {"id": 7, "file_name": "one.jpg", "width": 100, "height": 80},
            {"id": 8, "file_name": "two.png", "width": 0, "height": 0},
            {"id": 9, "file_name": "gone.jpg", "width": 10, "height": 10},
            {"id": 10, "file_name": "three.jpg", "width": 50, "height": 50},
            {"id": 11, "file_name": "gray.jpg", "width": 40, "height": 30},
        ],
        "categories": [{"id": 3, "name": "zebra"}, {"id": 1, "name": "ant"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 20, 30, 40], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [90, 70, 20, 20], "iscrowd": 0},  # clipped
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [5, 5, 0, 10], "iscrowd": 0},  # zero width
            {"id": 4, "image_id": 8, "category_id": 1, "bbox": [0, 0, 30, 30], "iscrowd": 1},  # crowd
            {"id": 5, "image_id": 8, "category_id": 99, "bbox": [0, 0, 5, 5], "iscrowd": 0},  # no category
            {"id": 6, "image_id": 42, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 0},  # no image
            {"id": 7, "image_id": 9, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 0},
            {"id": 8, "image_id": 7, "category_id": 3, "bbox": [1, 2], "iscrowd": 0},  # malformed
            {"id": 9, "image_id": 11, "category_id": 3, "bbox": [1.5, 2.5, 10, 10], "iscrowd": 0},
        ],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train.json").write_text(json.dumps(coco))
    return root


def test_coco_converts_boxes_maps_categories_and_counts_the_mess(tmp_path):
    root = build_coco(tmp_path / "coco")
    dataset, messages = open_with_warnings(root, "train")
    assert dataset.layout == "COCO instances JSON (annotations/instances_{split}.json)"
    assert dataset.class_names == ["ant", "zebra"]  # category-id order: 1, 3
    assert messages == [
        f"{root / 'annotations' / 'instances_train.json'} (images in {root / 'images'}): "
        "1 image file missing (dropped): gone.jpg; 1 malformed object skipped; "
        "2 annotations of unknown images or categories ignored; 1 zero-size box dropped; "
        "1 box clipped to the image; "
        "1 image size taken from the image file (the annotation said 0x0 or another size); "
        "1 difficult/crowd object left out of training"
    ]
    assert [dataset[i][1]["image_id"] for i in range(len(dataset))] == [7, 8, 10, 11]
    one = dataset[0][1]
    assert one["boxes"].tolist() == [[10.0, 20.0, 40.0, 60.0], [90.0, 70.0, 100.0, 80.0]]
    assert one["labels"].tolist() == [2, 1]
    assert dataset[1][1]["boxes"].shape == (0, 4) and dataset.image_size(1) == (60, 60)
    assert dataset[2][1]["labels"].tolist() == []  # an image without objects stays, as a negative
    gray_image, gray = dataset[3]
    assert gray_image.shape == (3, 30, 40) and gray["boxes"].tolist() == [[1.5, 2.5, 11.5, 12.5]]


def test_coco_for_evaluation_keeps_crowd_marked_and_accepts_a_class_order(tmp_path):
    json_file = build_coco(tmp_path / "coco") / "annotations" / "instances_train.json"
    dataset, _ = open_with_warnings(json_file, class_names=["zebra", "ant"], include_difficult=True)
    crowd = dataset[1][1]
    assert crowd["boxes"].tolist() == [[0.0, 0.0, 30.0, 30.0]]
    assert crowd["difficult"].tolist() == [True] and crowd["labels"].tolist() == [2]
    assert dataset[0][1]["labels"].tolist() == [1, 2]
    with pytest.raises(DatasetError, match="not in the class list: zebra"):
        open_dataset(json_file, class_names=["ant"])


def test_coco_image_root_search_and_explicit_root(tmp_path):
    root = build_coco(tmp_path / "coco")
    json_file = root / "annotations" / "instances_train.json"
    (root / "images").rename(root / "JPEGImages")
    with pytest.warns(DatasetWarning, match=r"images in .*JPEGImages\)"):
        assert len(read_dataset(coco_file(json_file))) == 4
    beside = tmp_path / "beside"
    (root / "JPEGImages").rename(beside)
    with pytest.warns(DatasetWarning):
        assert len(read_dataset(coco_file(json_file, image_root=beside))) == 4
    with pytest.raises(DatasetError, match="no usable images.*5 image files missing"):
        read_dataset(coco_file(json_file))


def test_broken_coco_files_are_one_line_errors(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read .*broken.json"):
        open_dataset(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"images": "nope"}))
    with pytest.raises(DatasetError, match="not a COCO instances file"):
        open_dataset(wrong)


def write_coco_of_two_photos(root: Path, images: list[dict], categories: list[dict], annotations: list[dict]) -> Path:
    """a.jpg and b.jpg (60x40) in root/images; ``images`` gives their ids, the JSON is root/annotations/coco.json."""
    for image, name in zip(images, ("a.jpg", "b.jpg")):
        write_image(root / "images" / name, Image.new("RGB", (60, 40), GREEN))
        image.update(file_name=name, width=60, height=40)
    json_file = root / "annotations" / "coco.json"
    json_file.parent.mkdir(parents=True)
    json_file.write_text(json.dumps({"images": images, "categories": categories, "annotations": annotations}))
    return json_file


def ant_on_a_zebra_on_b(a, b, ant, zebra) -> list[dict]:
    """Annotations: an ant (category id ``ant``) on image id ``a``, a zebra on image id ``b``."""
    return [{"id": 1, "image_id": a, "category_id": ant, "bbox": [1, 2, 10, 10], "iscrowd": 0},
            {"id": 2, "image_id": b, "category_id": zebra, "bbox": [20, 5, 30, 20], "iscrowd": 0}]


@pytest.mark.parametrize("case", ["mixed category id types", "text image ids", "ids with gaps",
                                  "Roboflow's unused supercategory"])
def test_coco_ids_as_tools_write_them_load_with_the_classes_a_user_expects(case, tmp_path):
    categories = [{"id": 1, "name": "ant"}, {"id": 3, "name": "zebra"}]
    images, annotations = [{"id": 1}, {"id": 2}], ant_on_a_zebra_on_b(1, 2, 1, 3)
    if case == "mixed category id types":
        categories[1]["id"] = "3"
        annotations = ant_on_a_zebra_on_b(1, 2, "1", 3)
    elif case == "text image ids":
        images, annotations = [{"id": "IMG_0001"}, {"id": "IMG_0002"}], ant_on_a_zebra_on_b("IMG_0001", "IMG_0002", 1, 3)
    elif case == "ids with gaps":
        images, annotations = [{"id": 10}, {"id": 40}], ant_on_a_zebra_on_b(10, 40, 1, 3)
    else:  # Roboflow: category 0 is the supercategory of the others and no annotation uses it
        categories = [{"id": 0, "name": "insects-and-zebras", "supercategory": "none"},
                      {"id": 1, "name": "ant", "supercategory": "insects-and-zebras"},
                      {"id": 2, "name": "zebra", "supercategory": "insects-and-zebras"}]
        annotations = ant_on_a_zebra_on_b(1, 2, 1, 2)
    json_file = write_coco_of_two_photos(tmp_path / "coco", images, categories, annotations)
    dataset, messages = open_with_warnings(json_file)
    assert dataset.class_names == ["ant", "zebra"]
    assert [dataset[i][1]["labels"].tolist() for i in range(2)] == [[1], [2]]
    assert dataset[1][1]["boxes"].tolist() == [[20.0, 5.0, 50.0, 25.0]]
    assert [dataset[i][1]["image_id"] for i in range(2)] == ([10, 40] if case == "ids with gaps" else [1, 2])
    if case == "Roboflow's unused supercategory":
        assert messages == [f"{json_file} (images in {tmp_path / 'coco' / 'images'}): 1 category that no annotation "
                            "uses (the supercategory of the others, not a class): insects-and-zebras"]
    else:
        assert messages == []


@pytest.mark.parametrize("case, message", [
    ("category id null", "categories[1].id must be a whole number, got None"),
    ("category id a text", "categories[1].id must be a whole number, got 'zebra'"),
    ("category id twice", "categories[1].id gives 'zebra' the id 1, which is already the id of 'ant'"),
    ("image without an id", "images[1].id must be a number or a text, got None"),
    ("image id twice", "images[1].id 1 is also the id of images[0]"),
])
def test_coco_ids_that_cannot_be_read_are_refused_in_one_line_naming_the_field(case, message, tmp_path):
    categories, images = [{"id": 1, "name": "ant"}, {"id": 3, "name": "zebra"}], [{"id": 1}, {"id": 2}]
    if case.startswith("category"):
        categories[1]["id"] = {"category id null": None, "category id a text": "zebra", "category id twice": 1}[case]
    else:
        images[1] = {} if case == "image without an id" else {"id": "1"}
    json_file = write_coco_of_two_photos(tmp_path / "coco", images, categories, ant_on_a_zebra_on_b(1, 2, 1, 3))
    with pytest.raises(DatasetError) as info:
        open_dataset(json_file)
    assert str(info.value) == f"{json_file}: {message}"


# --- open_dataset errors ---------------------------------------------------------------------------------------


def test_open_dataset_errors_are_one_line(tmp_path):
    with pytest.raises(DatasetError, match="data set not found"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a known data set layout") as info:
        open_dataset(tmp_path / "empty")
    assert "\n" not in str(info.value)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(DatasetError, match="not a data set"):
        open_dataset(notes)
    flat = tmp_path / "flat"
    write_voc_xml(flat / "annotations" / "a.xml", "a.jpg", (10, 10), [("cat", (1, 1, 5, 5), False)])
    (flat / "images").mkdir()
    with pytest.raises(DatasetError, match=r"no usable images \(1 image file missing \(dropped\): a.jpg\)"):
        open_dataset(flat, "all")
    with pytest.raises(DatasetError, match="has no split 'trainval'"):
        open_dataset(flat, "trainval")
    unlabelled = tmp_path / "unlabelled"
    write_image(unlabelled / "images" / "a.jpg", Image.new("RGB", (10, 10)))
    write_voc_xml(unlabelled / "annotations" / "a.xml", "a.jpg", (10, 10))
    with pytest.raises(DatasetError, match="no object classes found"):
        open_dataset(unlabelled, "all")
    assert len(open_dataset(unlabelled, "all", class_names=["cat"])) == 1


# --- the real raccoon photos -----------------------------------------------------------------------------------


def test_raccoon_set_loads_cleanly():
    everything, messages = open_with_warnings(RACCOON, "all")
    assert messages == []  # a clean set gives no warning
    assert len(everything) == 200 and everything.class_names == ["raccoon"]
    assert sum(len(record.boxes) for record in everything.records) == 217
    first = everything[by_name(everything)["raccoon-1.jpg"]]
    assert first[0].shape == (3, 417, 650)
    assert first[1]["boxes"].tolist() == [[80.0, 87.0, 522.0, 408.0]]  # XML 81 88 522 408, 1-based


# The raccoon photos saved twice under two names (byte-identical files, each with its own boxes).
RACCOON_COPIES = [("raccoon-11.jpg", "raccoon-116.jpg"), ("raccoon-52.jpg", "raccoon-74.jpg"),
                  ("raccoon-65.jpg", "raccoon-98.jpg"), ("raccoon-83.jpg", "raccoon-120.jpg")]


def test_raccoon_train_val_and_test_partition_the_set_and_keep_copies_together():
    """The counts README.md and the accuracy benchmark cite: a change to the split must show here."""
    everything, _ = open_with_warnings(RACCOON, "all")
    splits = {split: open_with_warnings(RACCOON, split, include_difficult=split != "train")[0]
              for split in ("train", "val", "test")}
    assert {name: len(dataset) for name, dataset in splits.items()} == {"train": 169, "val": 16, "test": 15}
    assert {name: sum(len(r.boxes) for r in d.records) for name, d in splits.items()} == \
        {"train": 184, "val": 17, "test": 16}
    names = {split: set(by_name(dataset)) for split, dataset in splits.items()}
    assert names["train"] | names["val"] | names["test"] == set(by_name(everything))
    assert sum(len(found) for found in names.values()) == 200
    split_of = {name: split for split, found in names.items() for name in found}
    for first, second in RACCOON_COPIES:
        assert (RACCOON / "images" / first).read_bytes() == (RACCOON / "images" / second).read_bytes()
        assert split_of[first] == split_of[second]


def test_raccoon_grayscale_photos_come_back_rgb():
    everything, _ = open_with_warnings(RACCOON, "all")
    names = by_name(everything)
    for name in ("raccoon-150.jpg", "raccoon-152.jpg", "raccoon-161.jpg"):
        assert Image.open(RACCOON / "images" / name).mode == "L"
        image, target = everything[names[name]]
        assert image.shape[0] == 3 and (image.shape[2], image.shape[1]) == everything.image_size(names[name])
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
        assert len(target["boxes"]) >= 1
