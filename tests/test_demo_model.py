"""The shipped demo model (model/demo.pth): what `make serve` packs on a fresh clone."""

from __future__ import annotations

import pytest
import torch

from torchvision.io import read_image
from torchvision.ops import box_iou

from handler.checkpoint import load_checkpoint, model_from_checkpoint
from tests.conftest import TEST_EPOCHS
from training.checkpoints import save_serving_checkpoint
from training.demo import RECALL_SIZES, tag_recall


@pytest.fixture(scope="module")
def shipped_model(trained_checkpoint):
    return model_from_checkpoint(load_checkpoint(trained_checkpoint)).eval()


def test_the_shipped_checkpoint_is_small_and_holds_only_what_serving_reads(trained_checkpoint):
    state = load_checkpoint(trained_checkpoint)
    assert trained_checkpoint.stat().st_size < 8_000_000
    assert state["optimizer"] is None and state["lr_scheduler"] is None and state["args"] == {}
    floats = [t for t in state["model"].values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)


def test_tag_recall_holds_on_larger_and_wider_scenes(shipped_model):
    """Trained on varied sizes: 480x480 and 640x480 scenes are tagged as well as 320x320 ones (>= 0.9x)."""
    recall = {size: tag_recall(shipped_model, *size, scenes=30) for size in RECALL_SIZES}
    base = recall[RECALL_SIZES[0]]
    assert base >= 0.9, recall
    for size in RECALL_SIZES[1:]:
        assert recall[size] >= 0.9 * base, recall


def test_serving_copy_in_float16_keeps_the_detections(training_run, synthetic_data, tmp_path):
    """The float16 copy drops the optimizer and training arguments and finds the same boxes."""
    source = training_run / f"Epoch.{TEST_EPOCHS}.pth"
    full = load_checkpoint(source)
    copy_path = save_serving_checkpoint(source, tmp_path / "serving.pth", float16=True)
    copy = load_checkpoint(copy_path)
    assert copy["args"] == {} and copy["optimizer"] is None and "args" in full and full["optimizer"]
    assert copy["class_names"] == full["class_names"] and copy["model_config"] == full["model_config"]
    assert copy_path.stat().st_size < 0.3 * source.stat().st_size
    image = read_image(str(next((synthetic_data / "JPEGImages").glob("test_*.jpg")))).float() / 255
    models = [model_from_checkpoint(state).eval() for state in (full, copy)]
    for model in models:  # a model trained for 36 steps scores below the usual 0.05: keep every box
        model.roi_heads.score_thresh = 0.0
    with torch.inference_mode():
        (expected,), (got,) = (model([image]) for model in models)
    assert len(expected["boxes"]) >= 10
    for box, label in zip(expected["boxes"][:10], expected["labels"][:10]):
        same_class = got["boxes"][got["labels"] == label]
        assert box_iou(box[None], same_class).max() > 0.95
