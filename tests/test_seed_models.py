"""The seed's VGG16 and ResNet50 from the training CLI through `python -m scripts.make_archive` to the real TorchServe.

Each backbone: one step of the training CLI from random backbone weights on 128-160 px images (a CPU-sized
step; the networks are the seed's, the two 4096-wide RoI layers included), the archive of that checkpoint, and
a TorchServe on free loopback ports (the repository's config.properties otherwise) answering generated photos.
The figures a user waits for are printed (`pytest -s` shows them): archive size and time, time until the model
answers, and the latency of one photo.

ResNet50 (490 M parameters: a 3.9 GB checkpoint with its optimizer state, two 1-2 GB workers) adds minutes to a
2-core CPU run, so `make test` runs VGG16 only and `make test-seed-models` (``TAGGER_SEED_MODELS=all``) both.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from common.model_archive import extract_serialized_file
from handler.checkpoint import load_checkpoint
from tests.conftest import run_module
from tests.test_serving import Server, scene, torchserve
from training.checkpoints import checkpoint_name

ALL_SEED_MODELS = os.environ.get("TAGGER_SEED_MODELS") == "all"
SMALL_IMAGES = ["--model-override", "min_size=128", "--model-override", "max_size=160"]
PHOTO_SIZES = ((480, 360), (360, 480), (1024, 768))


@dataclass
class ServedSeedModel:
    backbone: str
    archive: Path
    archive_seconds: float
    ready_seconds: float
    server: Server


@pytest.fixture(scope="module", params=[
    "vgg16",
    pytest.param("resnet50", marks=pytest.mark.skipif(
        not ALL_SEED_MODELS, reason="minutes on a 2-core CPU: `make test-seed-models` runs it")),
])
def served(request, synthetic_data, tmp_path_factory) -> ServedSeedModel:
    backbone = request.param
    root = tmp_path_factory.mktemp(f"seed_{backbone}")
    trained = run_module("training.train", "--data", synthetic_data, "--backbone", backbone,
                         "--backbone-weights", "none", *SMALL_IMAGES, "--epochs", 1, "--max-steps-per-epoch", 1,
                         "--batch-size", 1, "--workers", 0, "--val-split", "", "--no-progress",
                         "--output-dir", root / "model")
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    store = root / "store"
    started = time.perf_counter()
    packed = run_module("scripts.make_archive", "--checkpoint", root / "model" / checkpoint_name(1),
                        "--output", store / "tagger.mar")
    archive_seconds = time.perf_counter() - started
    assert packed.returncode == 0, packed.stdout + packed.stderr
    (root / "model" / checkpoint_name(1)).unlink()  # gigabytes; the archive has its own copy
    started = time.perf_counter()
    with torchserve(store, root) as server:
        yield ServedSeedModel(backbone, store / "tagger.mar", archive_seconds, time.perf_counter() - started, server)


def test_the_archive_holds_the_seed_network_with_trainable_batch_norm(served, tmp_path):
    state = load_checkpoint(extract_serialized_file(served.archive, tmp_path), mmap=True)
    config = state["model_config"]
    assert config["backbone"] == served.backbone
    assert (config["min_size"], config["max_size"]) == (128, 160)
    assert config["representation_size"] == 4096 and config["anchor_sizes"] == [128, 256, 512]
    assert config["backbone_norm"] == "batch_norm"  # random backbone weights: statistics that learn
    assert {tensor.dtype for tensor in state["model"].values() if tensor.is_floating_point()} == {torch.float16}


def test_photos_are_answered_in_their_own_pixels(served):
    latencies = []
    for seed, (width, height) in enumerate(PHOTO_SIZES):
        photo, _ = scene(7000 + seed, width=width, height=height)
        started = time.perf_counter()
        answer = served.server.post(data=photo, headers={"Content-Type": "image/jpeg", "X-Score-Threshold": "0"})
        latencies.append(time.perf_counter() - started)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"tags", "detections", "width", "height"}
        assert (body["width"], body["height"]) == (width, height)
        for detection in body["detections"]:
            x1, y1, x2, y2 = detection["box"]
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    refused = served.server.post(data=b"not an image", headers={"Content-Type": "image/jpeg"})
    assert refused.status_code == 400 and refused.json()["error"] == "not_an_image"
    print(f"\n{served.backbone}: archive {served.archive.stat().st_size / 2**20:.0f} MiB in "
          f"{served.archive_seconds:.0f} s, ready {served.ready_seconds:.0f} s after start, "
          f"per photo {', '.join(f'{s:.2f}' for s in latencies)} s ({', '.join(f'{w}x{h}' for w, h in PHOTO_SIZES)})")
