"""ONNX Runtime as a CPU worker's runtime (handler/onnx_runtime.py): the same detections as PyTorch's float32,
and threads that follow torch's thread count."""

from __future__ import annotations

import random

import pytest
import torch
from torchvision.transforms.functional import pil_to_tensor

from handler.onnx_runtime import OnnxDetector
from handler.tagging import Tagger
from project import SHIPPED_CHECKPOINT
from training.demo import RECALL_SIZES, tag_recall
from training.synthetic import render_image

# Photos of the shapes uploads have: landscape, portrait, square, and one so thin that the Tagger pads it.
SIZES = ((640, 480), (300, 500), (320, 320), (4000, 30))


@pytest.fixture(scope="module")
def photos() -> list[torch.Tensor]:
    rng = random.Random("onnx")
    return [pil_to_tensor(render_image(rng, width=width, height=height)[0]) for width, height in SIZES]


@pytest.fixture(scope="module")
def taggers() -> dict[str, Tagger]:
    return {runtime: Tagger.from_checkpoint(SHIPPED_CHECKPOINT, cpu_runtime=runtime)
            for runtime in ("float32", "onnxruntime")}


def test_onnx_runtime_finds_what_pytorch_finds(taggers, photos):
    assert isinstance(taggers["onnxruntime"].run_model, OnnxDetector) and taggers["onnxruntime"].runtime == "onnxruntime"
    assert taggers["float32"].run_model is taggers["float32"].model and taggers["float32"].runtime == "float32"
    compared = 0
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for wanted, got in zip(taggers["float32"].detect(photos), taggers["onnxruntime"].detect(photos)):
            assert [d.label for d in got] == [d.label for d in wanted]
            for a, b in zip(wanted, got):
                assert abs(a.score - b.score) < 1e-4 and max(abs(p - q) for p, q in zip(a.box, b.box)) < 1e-2
                compared += 1
    assert compared >= 20  # the scenes hold objects the demo model finds


def test_an_image_without_objects_gives_no_detections(taggers):
    blank = torch.full((3, 240, 320), 128, dtype=torch.uint8)
    assert taggers["onnxruntime"].detect([blank]) == taggers["float32"].detect([blank]) == [[]]


def test_one_session_per_thread_count_sharing_the_weights(taggers, photos):
    detector = taggers["onnxruntime"].run_model
    for threads in (2, 1, 2):
        torch.set_num_threads(threads)
        taggers["onnxruntime"].detect(photos[:1])
    assert set(detector._sessions) >= {1, 2}
    assert {s.get_session_options().intra_op_num_threads for t, s in detector._sessions.items()} == set(detector._sessions)
    # every session is handed the graph's initializers from one set of arrays
    assert detector._weights and [name for name, _ in detector._shared] == [name for name, _ in detector._weights]


def test_tag_recall_holds_in_onnx_runtime(taggers):
    """The demo model's recall check (tests/test_demo_model.py) run by ONNX Runtime: float32's, at every size."""
    for size in RECALL_SIZES:
        with torch.inference_mode():
            exact = tag_recall(taggers["float32"].model, *size, scenes=30)
        assert tag_recall(taggers["onnxruntime"].run_model, *size, scenes=30) == exact >= 0.9, size
