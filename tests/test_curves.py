"""Training curves: TensorBoard event files and curves.png written by a 2-step run, continued by a resume."""

from __future__ import annotations

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import DEMO_TRAIN_ARGS
from tests.layout_writers import raccoon_samples, write_layout
from tests.test_layouts import SMALL_RUN
from training import events, train


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    """A run of 2 steps (1 epoch) on four raccoon photos and two validation photos; then its output folder."""
    root = tmp_path_factory.mktemp("curves")
    data = write_layout("voc-images-annotations", raccoon_samples(count=6, val=2), ["raccoon"], root / "data")
    output = root / "run"
    arguments = ["--data", str(data), "--output-dir", str(output), "--max-steps-per-epoch", "2", *DEMO_TRAIN_ARGS,
                 *SMALL_RUN]
    assert train.main([*arguments, "--epochs", "1"]) == 0
    return output, arguments


def test_a_two_step_run_writes_event_files_and_the_png(two_step_run):
    output, _ = two_step_run
    assert len(list(output.glob("events.out.tfevents.*"))) == 1  # beside log.jsonl and the checkpoint
    scalars = events.read_scalars(output)
    for loss in ("loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"):
        steps, values = scalars[f"train/{loss}"]
        assert steps == [1, 2] and all(value >= 0 for value in values)
    assert scalars["train/lr"][0] == [1, 2] and scalars["train/lr"][1][0] < scalars["train/lr"][1][1]  # warm-up
    assert scalars["val/map50"][0] == [1] and 0 <= scalars["val/map50"][1][0] <= 1
    assert scalars["val/map"][0] == [1]
    images = EventAccumulator(str(output))
    images.Reload()
    assert images.Tags()["images"] == ["val/predictions/0", "val/predictions/1"]  # both validation photos
    with Image.open(output / events.CURVES_FILE) as picture:
        assert picture.format == "PNG" and picture.size == (1280, 360)


def test_a_resumed_run_continues_the_step_numbers_and_redraws(two_step_run):
    output, arguments = two_step_run
    drawn_before = (output / events.CURVES_FILE).read_bytes()
    assert train.main([*arguments, "--epochs", "2", "--resume", str(output / "Epoch.1.pth")]) == 0
    scalars = events.read_scalars(output)
    assert scalars["train/loss"][0] == [1, 2, 3, 4] and scalars["val/map50"][0] == [1, 2]
    assert (output / events.CURVES_FILE).read_bytes() != drawn_before


def test_the_events_cli_draws_a_run_folder_and_refuses_one_without_events(two_step_run, tmp_path, capsys):
    output, _ = two_step_run
    assert events.main([str(output), "--output", str(tmp_path / "again.png")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "again.png")
    assert Image.open(tmp_path / "again.png").size == (1280, 360)
    assert events.main([str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"error: no TensorBoard event files in {tmp_path}"
