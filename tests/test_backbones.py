"""--backbone-weights: ImageNet weights through torchvision's weights API (from the torch cache), offline errors,
and torchvision's classification weights mapped onto the detector's backbone."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet50, vgg16

from handler.checkpoint import load_checkpoint
from tests.conftest import run_module
from tests.test_datasets import RACCOON
from training import train
from training.backbones import (backbone_start_state, backbone_state_from_torchvision, default_backbone_weights,
                                imagenet_file)
from training.presets import build_detector

# Cheap seed models: small images and a narrow RoI head (the backbone is what these tests are about).
SMALL_MODEL = ["--model-override", "min_size=128", "--model-override", "max_size=160",
               "--model-override", "representation_size=32"]
# A proxy on a closed loopback port: every download fails at once, as on a machine without internet.
OFFLINE = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}


def test_defaults_are_imagenet_for_the_seed_backbones_and_none_for_demo():
    assert [default_backbone_weights(b) for b in ("vgg16", "resnet50", "demo")] == ["imagenet", "imagenet", "none"]
    assert imagenet_file("resnet50").name == "resnet50-0676ba61.pth"
    with pytest.raises(ValueError, match="the demo backbone has no ImageNet weights"):
        backbone_start_state("demo", "imagenet")


def test_vgg16_starts_from_the_imagenet_file_in_the_torch_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = imagenet_file("vgg16")
    assert cached == tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    weights = {f"features.{k}": v for k, v in vgg16(weights=None).features.state_dict().items()}
    cached.parent.mkdir(parents=True)
    torch.save(weights, cached)
    code = train.main(["--data", str(RACCOON), "--backbone", "vgg16", "--epochs", "1", "--max-steps-per-epoch", "1",
                       "--val-split", "", "--batch-size", "1", "--lr", "0", "--workers", "0", "--no-progress",
                       "--output-dir", str(tmp_path / "run"), *SMALL_MODEL])
    assert code == 0, capsys.readouterr().err[-3000:]
    state = load_checkpoint(tmp_path / "run" / "Epoch.1.pth")
    # With lr 0 the step changes nothing: the backbone holds exactly the cached ImageNet file's weights.
    assert torch.equal(state["model"]["backbone.0.weight"], weights["features.0.weight"])
    assert torch.equal(state["model"]["backbone.28.bias"], weights["features.28.bias"])
    assert state["args"]["backbone_weights"] == "imagenet"
    assert state["model_config"]["backbone_norm"] == "frozen_batch_norm"  # what the backbone started from


def test_offline_without_the_cached_file_stops_with_one_line_naming_file_and_folder(tmp_path):
    torch_home = tmp_path / "torch"
    result = run_module("training.train", "--data", RACCOON, "--backbone", "resnet50", "--output-dir", tmp_path,
                        env={"TORCH_HOME": str(torch_home), **OFFLINE})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot download the ImageNet weights of resnet50"), \
        result.stderr
    assert f"put resnet50-0676ba61.pth (from https://download.pytorch.org/models/resnet50-0676ba61.pth) " \
           f"into {torch_home / 'hub' / 'checkpoints'}" in lines[0]
    assert not list(tmp_path.glob("Epoch.*.pth"))


TORCHVISION_CLASSIFIERS = {"vgg16": vgg16, "resnet50": resnet50}


@pytest.mark.parametrize("backbone", sorted(TORCHVISION_CLASSIFIERS))
def test_torchvision_weights_load_onto_the_backbone(backbone):
    torch.manual_seed(2)
    classifier = TORCHVISION_CLASSIFIERS[backbone](weights=None).eval()
    # Random batch-norm values too: fresh ones equal frozen batch norm's, so loading them would not show.
    with torch.no_grad():
        for norm in (m for m in classifier.modules() if isinstance(m, nn.BatchNorm2d)):
            for tensor in (norm.weight, norm.running_var):
                tensor.uniform_(0.5, 1.5)
            for tensor in (norm.bias, norm.running_mean):
                tensor.normal_(0, 0.1)
    torch.manual_seed(0)
    # The seed's backbone; a narrow RoI head (the seed's fc6 alone holds 100-400 M weights) changes nothing of it.
    detector_backbone = build_detector(backbone, representation_size=64).backbone.eval()
    mapped = backbone_state_from_torchvision(backbone, classifier.state_dict())
    assert not any(k.startswith(("classifier.", "fc.")) for k in mapped)
    assert not all(torch.equal(detector_backbone.state_dict()[k], v) for k, v in mapped.items()
                   if k in detector_backbone.state_dict())

    result = detector_backbone.load_state_dict(mapped, strict=True)

    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    loaded = detector_backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in mapped.items() if k in loaded)
    # The same network: the classifier's feature layers and the detector's backbone agree on an image.
    trunk = classifier.features[:-1] if backbone == "vgg16" else nn.Sequential(*list(classifier.children())[:-2])
    image = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        expected = trunk(image)
        # Frozen batch norm folds its statistics into one scale and shift: float rounding differs a little.
        torch.testing.assert_close(detector_backbone(image), expected, rtol=1e-4,
                                   atol=1e-4 * expected.abs().max().item())


def test_demo_has_no_torchvision_weights_format():
    with pytest.raises(ValueError, match="backbone 'demo' has no torchvision weights format"):
        backbone_state_from_torchvision("demo", {})
