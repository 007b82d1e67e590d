"""Data set layouts as labelling tools export them: found by themselves, read alike, trained unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from handler.checkpoint import load_checkpoint
from tests.conftest import DEMO_TRAIN_ARGS
from tests.test_inspect import run_inspect
from tests.layout_writers import LAYOUTS, generated_samples, raccoon_samples, write_layout
from tests.test_datasets import by_name, open_with_warnings, write_image, write_voc_xml
from training import formats, train
from training.datasets import DatasetError, open_dataset
from training.layouts import FORMATS, find_layout

SHAPE_CLASSES = ["box", "cross"]
# Two images per step at a third of the demo's input size: the tests show the data trains, not how well.
SMALL_RUN = ["--batch-size", "2", "--model-override", "min_size=160", "--model-override", "max_size=240"]


def boxes_by_image(dataset) -> dict[str, list[tuple[str, list[float]]]]:
    """image name -> (class name, box rounded to 0.01 px) of each object, in the file's order."""
    found = {}
    for index in range(len(dataset)):
        record = dataset.records[index]
        found[record.path.name] = [(dataset.class_names[label - 1], [round(c, 2) for c in box])
                                   for box, label in zip(record.boxes, record.labels)]
    return found


def test_every_module_of_training_formats_is_a_format_with_its_layouts_written_here():
    """Adding a format is adding its module and its writers in tests/layout_writers.py, nothing else."""
    modules = {path.stem for path in Path(formats.__file__).parent.glob("*.py")} - {"__init__"}
    assert set(FORMATS) == modules
    assert {layout.split("-")[0] for layout in LAYOUTS} == set(FORMATS)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generated_samples(tmp_path_factory.mktemp("shapes"))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_is_found_and_reads_the_same_images_and_boxes(layout, shapes, tmp_path):
    data = write_layout(layout, shapes, SHAPE_CLASSES, tmp_path / layout)
    expected = {split: {s.image.name: [(name, list(box)) for box, name in zip(s.boxes, s.names)]
                        for s in shapes if split == "all" or s.split == split} for split in ("train", "val", "all")}
    for split in ("train", "val"):
        dataset, messages = open_with_warnings(data, split)
        assert messages == [] and dataset.class_names == SHAPE_CLASSES
        assert LAYOUTS[layout][1] in dataset.layout
        assert boxes_by_image(dataset) == expected[split]
        assert sorted(record.width for record in dataset.records) == \
            sorted(s.width for s in shapes if s.split == split)
    image, target = open_dataset(data, "train")[0]
    assert image.shape[0] == 3 and target["boxes"].dtype == torch.float32


# --- the real raccoon photos, rearranged into each layout and trained --------------------------------------------


@pytest.fixture(scope="module")
def raccoon_photos():
    """Ten training and two validation photos of the raccoon set (by the content split)."""
    return raccoon_samples(count=12, val=2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_raccoon_photos_are_checked_and_train_unchanged_in_each_layout(layout, raccoon_photos, tmp_path, capsys):
    data = write_layout(layout, raccoon_photos, ["raccoon"], tmp_path / "data")
    code, out = run_inspect(capsys, data, "--sheet", tmp_path / "sheet.png", "--sheet-images", 4)
    assert code == 0, out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    boxes = [str(sum(len(s.boxes) for s in raccoon_photos if s.split == split)) for split in ("train", "val")]
    assert LAYOUTS[layout][1] in out and rows["images"] == ["10", "2"] and rows["raccoon"] == boxes
    assert "(4 train images with their boxes)" in out and (tmp_path / "sheet.png").is_file()

    output = tmp_path / "run"
    code = train.main(["--data", str(data), "--epochs", "1", "--max-steps-per-epoch", "2", "--output-dir", str(output),
                       *DEMO_TRAIN_ARGS, *SMALL_RUN])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    assert "on 10 images of 1 classes" in printed.out and LAYOUTS[layout][1] in printed.out
    state = load_checkpoint(output / "Epoch.1.pth")
    assert state["class_names"] == ["raccoon"] and state["args"]["backbone_weights"] == "none"
    record = json.loads((output / "log.jsonl").read_text())
    assert record["steps"] == 2 and "map50" in record


# --- what each format reads --------------------------------------------------------------------------------------


def test_messy_yolo_labels_are_repaired_and_counted_in_one_warning(tmp_path):
    root = tmp_path / "messy"
    write_image(root / "images" / "a.jpg", Image.new("RGB", (200, 100)))
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.4\n"  # x 80..120, y 30..70
        "1 0.9 0.5 0.4 0.2\n"  # x 140..220: clipped to 200
        "0 0.5 0.5 0 0.1\n"  # zero width
        "7 0.5 0.5 0.1 0.1\n"  # no class 7
        "1 0.1 0.1 0.3 0.1 0.3 0.3\n"  # a polygon: its bounding box x 20..60, y 10..30
        "not a number\n\n")
    write_image(root / "images" / "unlabelled.png", Image.new("RGB", (50, 50)), "PNG")
    (root / "classes.txt").write_text("cat\ndog\n")
    dataset, messages = open_with_warnings(root, "all")
    assert dataset.layout == "YOLO (images/ + labels/)" and dataset.class_names == ["cat", "dog"]
    assert messages == [f"{root} [all]: 1 image without a label file kept as a negative; "
                        "2 malformed objects skipped; 1 zero-size box dropped; 1 box clipped to the image"]
    target = dataset[by_name(dataset)["a.jpg"]][1]
    expected = torch.tensor([[80, 30, 120, 70], [140, 40, 200, 60], [20, 10, 60, 30]], dtype=torch.float32)
    assert torch.allclose(target["boxes"], expected, atol=1e-3)
    assert target["labels"].tolist() == [1, 2, 2]
    assert dataset[by_name(dataset)["unlabelled.png"]][1]["boxes"].shape == (0, 4)


def test_yolo_without_class_names_numbers_its_classes_unless_named(tmp_path):
    root = tmp_path / "unnamed"
    write_image(root / "photo.jpg", Image.new("RGB", (100, 100)))
    (root / "photo.txt").write_text("2 0.5 0.5 0.5 0.5\n")
    dataset, _ = open_with_warnings(root, "all")
    assert dataset.class_names == ["0", "1", "2"] and dataset[0][1]["labels"].tolist() == [3]
    named, _ = open_with_warnings(root, "all", class_names=["ant", "bee", "cow"])
    assert named.class_names == ["ant", "bee", "cow"] and named[0][1]["labels"].tolist() == [3]


def test_data_yaml_names_as_a_mapping_list_files_and_missing_splits(tmp_path):
    root = tmp_path / "yaml"
    for stem in ("a", "b"):
        write_image(root / "images" / f"{stem}.jpg", Image.new("RGB", (64, 64)))
        (root / "labels").mkdir(exist_ok=True)
        (root / "labels" / f"{stem}.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (root / "train.txt").write_text("./images/a.jpg\n")
    (root / "dataset.yaml").write_text(yaml.safe_dump({"train": "train.txt", "names": {0: "ant", 1: "bee"}}))
    dataset, _ = open_with_warnings(root / "dataset.yaml", "train")
    assert [r.path.name for r in dataset.records] == ["a.jpg"] and dataset.class_names == ["ant", "bee"]
    with pytest.raises(DatasetError, match=r"dataset.yaml has no split 'val' \(it has: train\)"):
        open_dataset(root, "val")


def write_yolo_train_folder(root: Path, stem: str) -> None:
    """root/images/train/{stem}.jpg with one box in root/labels/train/{stem}.txt."""
    write_image(root / "images" / "train" / f"{stem}.jpg", Image.new("RGB", (64, 64)))
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / f"{stem}.txt").write_text("0 0.5 0.5 0.5 0.5\n")


def test_a_relative_data_yaml_path_is_found_as_ultralytics_finds_it(tmp_path, monkeypatch):
    """Ultralytics (``check_det_dataset``) takes a relative ``path`` from the current folder when it is there;
    where it is not, Ultralytics looks in its own datasets_dir setting, and this project beside the data.yaml."""
    work = tmp_path / "work"
    data_yaml = work / "configs" / "data.yaml"
    data_yaml.parent.mkdir(parents=True)
    data_yaml.write_text(yaml.safe_dump({"path": "shapes", "train": "images/train", "names": ["box"]}))
    write_yolo_train_folder(work / "shapes", "from-the-current-folder")
    write_yolo_train_folder(work / "configs" / "shapes", "beside-the-yaml")
    monkeypatch.chdir(work)
    dataset, _ = open_with_warnings(data_yaml, "train")
    assert [r.path for r in dataset.records] == [work / "shapes" / "images" / "train" / "from-the-current-folder.jpg"]
    monkeypatch.chdir(tmp_path)  # no shapes/ here: the folder beside the data.yaml
    dataset, _ = open_with_warnings(data_yaml, "train")
    assert [r.path.name for r in dataset.records] == ["beside-the-yaml.jpg"]


def test_a_data_yaml_path_that_holds_no_entry_says_where_it_looked_and_by_which_rule(tmp_path, monkeypatch):
    work = tmp_path / "work"
    data_yaml = work / "configs" / "data.yaml"
    data_yaml.parent.mkdir(parents=True)
    data_yaml.write_text(yaml.safe_dump({"path": "shapes", "train": "images/train", "names": ["box"]}))
    (work / "shapes").mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(DatasetError) as info:
        open_dataset(data_yaml, "train")
    assert str(info.value) == (
        f"{data_yaml}: images/train not found (looked in {work / 'shapes' / 'images' / 'train'} ('path: shapes' "
        f"taken from the current folder, as Ultralytics takes it); {work / 'configs' / 'shapes' / 'images' / 'train'} "
        "('path: shapes' taken from the data.yaml's folder))")


def test_a_coco_file_without_splits_is_split_by_content_and_keeps_its_split_annotations(tmp_path, shapes):
    data = write_layout("coco-single-file-label-studio", shapes, SHAPE_CLASSES, tmp_path / "coco")
    train_set, messages = open_with_warnings(data, "train")
    assert messages == []  # the other split's annotations are not "unknown images"
    assert "[train]" in train_set.description
    with pytest.raises(DatasetError, match="a data set without splits has no split 'trainval'"):
        open_dataset(data, "trainval")


def test_format_overrides_the_guess(tmp_path, shapes):
    """A folder holding VOC XML and YOLO labels of the same photos: VOC is guessed, --format picks YOLO."""
    root = write_layout("voc-images-annotations", shapes, SHAPE_CLASSES, tmp_path / "both")
    with pytest.raises(DatasetError, match="not a known data set layout for coco: looked for annotations/"):
        open_dataset(root, "all", format="coco")
    write_layout("yolo-beside-labelimg", shapes, SHAPE_CLASSES, root / "images")
    assert open_dataset(root, "all").layout.startswith("Pascal VOC")
    assert open_dataset(root, "all", format="yolo").layout == "YOLO (labels beside the images)"


def test_unknown_folder_error_lists_what_was_looked_for_in_one_line(tmp_path):
    (tmp_path / "photos").mkdir()
    write_image(tmp_path / "photos" / "a.jpg", Image.new("RGB", (8, 8)))
    with pytest.raises(DatasetError) as info:
        find_layout(tmp_path / "photos", "train")
    message = str(info.value)
    assert "\n" not in message and "photos is not a known data set layout: looked for " in message
    for looked_for in ("ImageSets/Main/{split}.txt", "images/ + annotations/ or labels/ with .xml",
                       ".xml beside the images", "instances_{split}.json", "images/ + labels/ with .txt",
                       "train/ + val/ folders"):
        assert looked_for in message


def test_split_folders_name_the_splits_they_have(tmp_path, shapes):
    data = write_layout("voc-split-folders-roboflow", shapes, SHAPE_CLASSES, tmp_path / "roboflow")
    assert len(open_dataset(data, "val")) == 2  # valid/ serves as val
    with pytest.raises(DatasetError, match=r"has no split 'test' \(it has: train, val\)"):
        open_dataset(data, "test")


def test_layouts_inside_a_folder_given_one_level_too_high_are_named(tmp_path, shapes):
    write_layout("yolo-beside-labelimg", shapes, SHAPE_CLASSES, tmp_path / "exports" / "fruit")
    write_voc_xml(tmp_path / "exports" / "notes" / "x.xml", "x.jpg", (8, 8))
    with pytest.raises(DatasetError, match=r"data sets found inside: fruit, notes; give one of them"):
        open_dataset(tmp_path / "exports")
