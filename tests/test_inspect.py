"""The data set check (python -m training.inspect): its report, its contact sheet, its exit status."""

from __future__ import annotations

import pytest
import yaml
from PIL import Image

from common.draw import label_color
from project import RACCOON
from tests.conftest import run_module
from tests.test_datasets import build_malformed_exif_voc, build_messy_flat_voc, write_image, write_voc_xml
from training import inspect


def run_inspect(capsys, *args) -> tuple[int, str]:
    """Runs the check in this process; returns its exit status and what it printed."""
    code = inspect.main([str(a) for a in args])
    printed = capsys.readouterr()
    return code, printed.out + printed.err


def test_raccoon_report_counts_sizes_and_contact_sheet(tmp_path):
    sheet = tmp_path / "sheet.png"
    result = run_module("training.inspect", RACCOON, "--sheet", sheet)  # as a user runs it
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"data set: {RACCOON}" in lines and "layout:   Pascal VOC (images/ + annotations/)" in lines
    assert "classes:  1 (raccoon)" in lines
    table = lines[lines.index("classes:  1 (raccoon)") + 2:][:6]
    assert [line.split() for line in table] == [
        ["split", "train", "val"], ["images", "169", "16"], ["boxes", "184", "17"], ["negatives", "0", "0"],
        ["boxes", "per", "class:"], ["raccoon", "184", "17"]]
    sizes = next(line for line in lines if line.startswith("  min "))
    assert "(184 training boxes)" in sizes
    assert "  train: none" in lines and "  val: none" in lines
    assert f"contact sheet: {sheet} (12 train images with their boxes)" in lines
    assert lines[-1] == "ok: training.train can start with these options"
    with Image.open(sheet) as picture:
        assert picture.size == (4 * inspect.SHEET_CELL, 3 * (inspect.SHEET_CELL + 18))
        colors = {color for _, color in picture.convert("RGB").getcolors(1 << 24)}
    assert label_color("raccoon") in colors  # the boxes and labels are drawn


def test_box_sizes_are_measured_in_the_chosen_models_input(capsys, tmp_path):
    code, out = run_inspect(capsys, RACCOON, "--backbone", "demo", "--sheet", tmp_path / "s.png")
    assert code == 0
    assert "in the demo model's input: short side 320 px, long side at most 480 px, anchors 32, 64, 128 px" in out
    assert "over twice the largest anchor, matching no anchor well: " in out  # raccoons fill the photos


def test_problems_the_loaders_fixed_are_listed(capsys, tmp_path):
    messy = build_messy_flat_voc(tmp_path / "messy")
    code, out = run_inspect(capsys, messy, "--train-split", "all", "--val-split", "", "--sheet", tmp_path / "s.png")
    assert code == 0
    problem = next(line for line in out.splitlines() if line.startswith("  all: "))
    assert "1 image file missing (dropped): missing.jpg" in problem and "1 zero-size box dropped" in problem


def test_a_photo_with_a_malformed_exif_block_is_counted_not_a_traceback(capsys, tmp_path):
    data = build_malformed_exif_voc(tmp_path / "exif")
    code, out = run_inspect(capsys, data, "--train-split", "all", "--val-split", "", "--sheet", tmp_path / "s.png")
    assert code == 0, out
    assert ["images", "2"] in [line.split() for line in out.splitlines()] and "  all: none" in out.splitlines()


@pytest.mark.parametrize("case, reason", [
    ("no layout", "the train split cannot be read"),
    ("no val split", "the val split cannot be read"),
    ("only negatives", "the train split has no boxes"),
])
def test_data_that_cannot_train_exits_with_1_and_says_why(case, reason, capsys, tmp_path):
    root = tmp_path / "data"
    write_image(root / "images" / "a.jpg", Image.new("RGB", (32, 32)))
    if case != "no layout":
        (root / "labels").mkdir()
        (root / "labels" / "a.txt").write_text("" if case == "only negatives" else "0 0.5 0.5 0.5 0.5\n")
        (root / "data.yaml").write_text(yaml.safe_dump({"train": "images", "names": ["cat"],
                                                        **({"val": "images"} if case != "no val split" else {})}))
    code, out = run_inspect(capsys, root, "--sheet", tmp_path / "s.png")
    assert code == 1
    assert out.splitlines()[-1].startswith("cannot train: ") and reason in out.splitlines()[-1]


def test_a_class_of_boxes_too_small_for_the_anchors_is_warned_with_the_overrides_that_fit_it(capsys, tmp_path):
    """12 px specks in 640x480 photos are 8 px in the demo model's input, under half its 32 px anchor."""
    root = tmp_path / "specks"
    for number in range(3):
        name = f"photo{number}.jpg"
        write_image(root / "images" / name, Image.new("RGB", (640, 480), (200, 180, 190)))
        x = 100 + 50 * number
        write_voc_xml(root / "annotations" / f"photo{number}.xml", name, (640, 480),
                      [("speck", (x, 200, x + 11, 211), False), ("cell", (300, 100, 399, 199), False)])
    options = ["--backbone", "demo", "--train-split", "all", "--val-split", "", "--sheet", tmp_path / "s.png"]
    code, out = run_inspect(capsys, root, *options)
    assert code == 0, out
    warnings = [line for line in out.splitlines() if "warning:" in line]
    assert warnings == [
        "  warning: speck boxes (median 8 px) are under half the smallest anchor (32 px): no anchor matches them "
        "well (IoU < 0.25 even when centred); --model-override anchor_sizes=[16,32,64,128], or a larger input: "
        "--model-override min_size=640 --model-override max_size=960"]
    for fix in (["anchor_sizes=[16,32,64,128]"], ["min_size=640", "max_size=960"]):  # each suggestion fits
        code, out = run_inspect(capsys, root, *options, *[a for value in fix for a in ("--model-override", value)])
        assert code == 0 and "warning:" not in out, out


def test_classes_fix_the_order_as_training_reads_them(capsys, tmp_path):
    """``--classes`` is read by the one parser training uses: names stripped, in the order given."""
    root = tmp_path / "pets"
    write_image(root / "images" / "a.jpg", Image.new("RGB", (40, 30)))
    write_voc_xml(root / "annotations" / "a.xml", "a.jpg", (40, 30),
                  [("cat", (2, 2, 12, 12), False), ("dog", (15, 5, 30, 25), False)])
    options = ["--train-split", "all", "--val-split", "", "--sheet", tmp_path / "s.png"]
    code, out = run_inspect(capsys, root, *options, "--classes", " dog, cat ")
    assert code == 0, out
    assert "classes:  2 (dog, cat)" in out.splitlines()
    code, out = run_inspect(capsys, root, *options, "--classes", "dog")
    assert code == 1 and "has objects of classes not in the class list: cat (class list: dog)" in out
