"""The model definition: every seed value, read off the torchvision modules of the built models.

All weights are random (nothing is downloaded). The two seed models are big (137 M and 490 M parameters), so each
is built once per module; one forward pass of either takes seconds on this CPU, a training step of resnet50
tens of seconds and 9 GB, so training steps run on small images or on the demo preset only.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import random
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn
from torchvision.io import ImageReadMode, decode_image
from torchvision.models import resnet50, vgg16
from torchvision.models.detection import FasterRCNN
from torchvision.ops import MultiScaleRoIAlign

from handler.detector import (
    BACKBONES,
    backbone_state_from_torchvision,
    build_detector,
    build_detector_from_config,
    make_faster_rcnn,
    model_config,
)
from training.synthetic import render_image

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# backbone -> (feature channels, feature stride)
SEED_BACKBONES = {"vgg16": (512, 16), "resnet50": (2048, 32)}

# Parameter counts, computed once by hand and checked against torchvision (C = backbone channels):
#   RPN head       3x3 conv C*C*9 + C, objectness C*9 + 9, box deltas C*36 + 36
#   box head       fc6 C*49*4096 + 4096, fc7 4096*4096 + 4096 = 16,781,312
#   box predictor  cls_score 4096*23 + 23 = 94,231, bbox_pred 4096*92 + 92 = 376,924  -> 471,155
# vgg16:    backbone = torchvision vgg16 features (13 convs) 14,714,688; RPN 2,359,808 + 4,617 + 18,468;
#           fc6 102,764,544.
# resnet50: backbone = torchvision resnet50 25,557,032 - fc 2,049,000 - batch-norm affine 53,120 (frozen
#           batch norm keeps them as buffers) = 23,454,912; RPN 37,750,784 + 18,441 + 73,764; fc6 411,045,888.
PARAMETER_COUNTS = {
    "vgg16": {"backbone": 14_714_688, "rpn": 2_382_893, "box_head": 119_545_856, "box_predictor": 471_155,
              "total": 137_114_592},
    "resnet50": {"backbone": 23_454_912, "rpn": 37_842_989, "box_head": 427_827_200, "box_predictor": 471_155,
                 "total": 489_596_256},
    # demo: six conv-BN layers 287,456 and two dilated ones 2 * (128*128*9 + 2*128); RPN on 128 channels
    # 153,389; fc6 128*49*256 + 256, fc7 256*256 + 256;
    # predictor 256*23 + 23 + 256*92 + 92.
    "demo": {"backbone": 582_880, "rpn": 153_389, "box_head": 1_671_680, "box_predictor": 29_555,
             "total": 2_437_504},
}


@pytest.fixture(scope="module", params=sorted(SEED_BACKBONES))
def seed_backbone(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def seed_model(seed_backbone) -> FasterRCNN:
    """The seed model of one backbone, built with no arguments but the backbone (in eval mode)."""
    torch.manual_seed(0)
    return build_detector(seed_backbone).eval()


def scene(folder: Path, *, width: int, height: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A generated picture, written as a JPEG file and read back, with its objects as a detection target."""
    image, objects = render_image(random.Random(seed), width=width, height=height)
    path = folder / f"scene_{seed}_{width}x{height}.jpg"
    image.save(path, quality=90)
    pixels = decode_image(str(path), mode=ImageReadMode.RGB).float() / 255
    target = {
        "boxes": torch.tensor([box for _, box in objects], dtype=torch.float32),
        "labels": torch.tensor([label + 1 for label, _ in objects], dtype=torch.int64),
    }
    return pixels, target


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def measured_std(layer: nn.Module) -> float:
    return layer.weight.detach().double().std().item()


def assert_normal_init(layer: nn.Module, std: float) -> None:
    """Weights look drawn from N(0, std) and the bias is zero.

    Each tolerance is six standard errors of its estimate for this many weights, so a correct init passes
    and torchvision's default init (uniform, std 1/sqrt(3*fan_in): 10 % or more off) fails.
    """
    weights = layer.weight.detach().double().flatten()
    n = weights.numel()
    assert abs(weights.mean().item()) < 6 * std / math.sqrt(n)
    assert weights.std().item() == pytest.approx(std, rel=6 / math.sqrt(2 * n))
    centred = weights - weights.mean()
    excess_kurtosis = ((centred**4).mean() / (centred**2).mean() ** 2 - 3).item()
    assert abs(excess_kurtosis) < 6 * math.sqrt(24 / n), "not Gaussian (a uniform init has -1.2)"
    assert torch.count_nonzero(layer.bias).item() == 0


# --- the seed values, on both seed backbones -------------------------------------------------------------


def test_image_size_400_600_and_imagenet_normalisation(seed_model):
    transform = seed_model.transform
    assert transform.min_size == (400,)
    assert transform.max_size == 600
    assert transform.image_mean == IMAGENET_MEAN
    assert transform.image_std == IMAGENET_STD
    # Shorter side to 400 unless the longer side would pass 600: then the longer side is 600.
    images = [torch.rand(3, 300, 500), torch.rand(3, 500, 300), torch.rand(3, 200, 250)]
    resized, _ = transform(images)
    assert resized.image_sizes == [(360, 600), (600, 360), (400, 500)]


def test_one_level_of_nine_anchors(seed_model, seed_backbone):
    anchors = seed_model.rpn.anchor_generator
    assert anchors.sizes == ((128, 256, 512),)
    assert anchors.aspect_ratios == ((0.5, 1.0, 2.0),)
    assert anchors.num_anchors_per_location() == [9]
    head = seed_model.rpn.head
    channels = SEED_BACKBONES[seed_backbone][0]
    assert head.conv[0][0].in_channels == channels
    assert head.cls_logits.out_channels == 9
    assert head.bbox_pred.out_channels == 9 * 4


def test_rpn_proposal_counts_and_nms(seed_model):
    rpn = seed_model.rpn
    assert rpn._pre_nms_top_n == dict(training=6000, testing=6000)
    assert rpn._post_nms_top_n == dict(training=2000, testing=300)
    assert rpn.nms_thresh == 0.7
    # Not in the seed table: torchvision's own defaults, kept.
    assert (rpn.proposal_matcher.high_threshold, rpn.proposal_matcher.low_threshold) == (0.7, 0.3)
    assert rpn.fg_bg_sampler.batch_size_per_image == 256
    assert rpn.fg_bg_sampler.positive_fraction == 0.5


def test_roi_align_7x7_and_two_4096_fc_layers(seed_model, seed_backbone):
    roi_heads = seed_model.roi_heads
    assert type(roi_heads.box_roi_pool) is MultiScaleRoIAlign
    assert roi_heads.box_roi_pool.output_size == (7, 7)
    assert roi_heads.box_roi_pool.featmap_names == ["0"]
    channels = SEED_BACKBONES[seed_backbone][0]
    fc6, fc7 = roi_heads.box_head.fc6, roi_heads.box_head.fc7
    assert (fc6.in_features, fc6.out_features) == (channels * 7 * 7, 4096)
    assert (fc7.in_features, fc7.out_features) == (4096, 4096)
    predictor = roi_heads.box_predictor
    assert (predictor.cls_score.in_features, predictor.cls_score.out_features) == (4096, 23)
    assert (predictor.bbox_pred.in_features, predictor.bbox_pred.out_features) == (4096, 23 * 4)


def test_roi_sampling_128_per_image_iou_half_quarter_positive(seed_model):
    roi_heads = seed_model.roi_heads
    assert roi_heads.fg_bg_sampler.batch_size_per_image == 128
    assert roi_heads.fg_bg_sampler.positive_fraction == 0.25
    assert roi_heads.proposal_matcher.high_threshold == 0.5
    assert roi_heads.proposal_matcher.low_threshold == 0.5
    # Not in the seed table: torchvision's inference defaults, kept.
    assert (roi_heads.score_thresh, roi_heads.nms_thresh, roi_heads.detections_per_img) == (0.05, 0.5, 100)


def test_backbone_channels_and_stride_measured(seed_model, seed_backbone):
    channels, stride = SEED_BACKBONES[seed_backbone]
    assert seed_model.backbone.out_channels == channels
    with torch.no_grad():
        features = seed_model.backbone(torch.rand(1, 3, 320, 480))
    assert features.shape == (1, channels, 320 // stride, 480 // stride)


def test_rpn_and_predictor_gaussian_init(seed_model):
    head = seed_model.rpn.head
    for layer in (head.conv[0][0], head.cls_logits, head.bbox_pred):
        assert_normal_init(layer, std=0.01)
    assert_normal_init(seed_model.roi_heads.box_predictor.cls_score, std=0.01)
    assert_normal_init(seed_model.roi_heads.box_predictor.bbox_pred, std=0.001)


def test_parameter_counts(seed_model, seed_backbone):
    expected = PARAMETER_COUNTS[seed_backbone]
    assert parameter_count(seed_model.backbone) == expected["backbone"]
    assert parameter_count(seed_model.rpn) == expected["rpn"]
    assert parameter_count(seed_model.roi_heads.box_head) == expected["box_head"]
    assert parameter_count(seed_model.roi_heads.box_predictor) == expected["box_predictor"]
    assert parameter_count(seed_model) == expected["total"]
    # Everything learns: torchvision's detection builders freeze early layers, this definition does not.
    assert all(p.requires_grad for p in seed_model.parameters())


def test_eval_gives_detections_in_each_images_own_pixels(seed_model, tmp_path, monkeypatch):
    # Random weights score every class about 1/23, under the 0.05 default: keep every detection.
    monkeypatch.setattr(seed_model.roi_heads, "score_thresh", 0.0)
    wide, _ = scene(tmp_path, width=500, height=300, seed=1)
    tall, _ = scene(tmp_path, width=300, height=500, seed=2)
    with torch.no_grad():
        outputs = seed_model([wide, tall])
    assert len(outputs) == 2
    for output, (width, height) in zip(outputs, [(500, 300), (300, 500)]):
        assert set(output) == {"boxes", "labels", "scores"}
        boxes = output["boxes"]
        assert 0 < len(boxes) <= 100
        assert boxes.shape == (len(boxes), 4)
        assert len(output["labels"]) == len(output["scores"]) == len(boxes)
        assert output["labels"].min() >= 1 and output["labels"].max() <= 22
        assert ((output["scores"] >= 0) & (output["scores"] <= 1)).all()
        assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
        assert boxes.min() >= 0
        # Boxes are clipped to the image, so the large anchors reach its right and bottom edges: in the
        # 400x600 frame the model computes in they would reach 600, in the other image's frame past it.
        assert boxes[:, 2].max().item() == pytest.approx(width, abs=1)
        assert boxes[:, 3].max().item() == pytest.approx(height, abs=1)


# --- training mode ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backbone, overrides",
    [("vgg16", {"min_size": 160, "max_size": 240}), ("demo", {})],
    ids=["vgg16-small-images", "demo"],
)
def test_train_step_gives_four_finite_losses_and_gradients_everywhere(backbone, overrides, tmp_path):
    torch.manual_seed(0)
    model = build_detector(backbone, **overrides).train()
    images, targets = zip(*(scene(tmp_path, width=320, height=240, seed=seed) for seed in (3, 4)))
    losses = model(list(images), list(targets))
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    for name, loss in losses.items():
        assert loss.dim() == 0 and torch.isfinite(loss), name
    sum(losses.values()).backward()
    first_conv = next(m for m in model.backbone.modules() if isinstance(m, nn.Conv2d))
    predictor = model.roi_heads.box_predictor
    for layer in (first_conv, model.rpn.head.cls_logits, model.rpn.head.bbox_pred, model.roi_heads.box_head.fc6,
                  predictor.cls_score, predictor.bbox_pred):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


# --- overrides, presets and the plain config --------------------------------------------------------------


def _roi_head_widths(model: FasterRCNN) -> tuple[int, ...]:
    box_head = model.roi_heads.box_head
    return (box_head.fc6.out_features, box_head.fc7.in_features, box_head.fc7.out_features,
            model.roi_heads.box_predictor.cls_score.in_features)


# Each keyword of make_faster_rcnn (but the backbone), a value that is neither the seed default nor the demo
# preset's, where it shows on the built demo model, and what it must read there.
OVERRIDES: list[tuple[str, Any, Callable[[FasterRCNN], Any], Any]] = [
    ("num_classes", 5, lambda m: (m.roi_heads.box_predictor.cls_score.out_features,
                                  m.roi_heads.box_predictor.bbox_pred.out_features), (5, 20)),
    ("min_size", 256, lambda m: m.transform.min_size, (256,)),
    ("max_size", 288, lambda m: m.transform.max_size, 288),
    ("image_mean", [0.5, 0.4, 0.3], lambda m: m.transform.image_mean, [0.5, 0.4, 0.3]),
    ("image_std", [0.2, 0.3, 0.4], lambda m: m.transform.image_std, [0.2, 0.3, 0.4]),
    ("anchor_sizes", [16, 48], lambda m: (m.rpn.anchor_generator.sizes, m.rpn.head.cls_logits.out_channels),
     (((16, 48),), 2 * 3)),
    ("aspect_ratios", [0.25, 1.0, 4.0, 8.0],
     lambda m: (m.rpn.anchor_generator.aspect_ratios, m.rpn.head.bbox_pred.out_channels),
     (((0.25, 1.0, 4.0, 8.0),), 3 * 4 * 4)),
    ("rpn_pre_nms_top_n_train", 700, lambda m: m.rpn._pre_nms_top_n["training"], 700),
    ("rpn_pre_nms_top_n_test", 400, lambda m: m.rpn._pre_nms_top_n["testing"], 400),
    ("rpn_post_nms_top_n_train", 300, lambda m: m.rpn._post_nms_top_n["training"], 300),
    ("rpn_post_nms_top_n_test", 50, lambda m: m.rpn._post_nms_top_n["testing"], 50),
    ("rpn_nms_thresh", 0.6, lambda m: m.rpn.nms_thresh, 0.6),
    ("rpn_fg_iou_thresh", 0.8, lambda m: m.rpn.proposal_matcher.high_threshold, 0.8),
    ("rpn_bg_iou_thresh", 0.2, lambda m: m.rpn.proposal_matcher.low_threshold, 0.2),
    ("rpn_batch_size_per_image", 64, lambda m: m.rpn.fg_bg_sampler.batch_size_per_image, 64),
    ("rpn_positive_fraction", 0.4, lambda m: m.rpn.fg_bg_sampler.positive_fraction, 0.4),
    ("rpn_init_std", 0.03, lambda m: [measured_std(layer) for layer in
                                      (m.rpn.head.conv[0][0], m.rpn.head.cls_logits, m.rpn.head.bbox_pred)],
     pytest.approx([0.03] * 3, rel=0.05)),
    ("roi_output_size", 5, lambda m: (m.roi_heads.box_roi_pool.output_size, m.roi_heads.box_head.fc6.in_features),
     ((5, 5), 128 * 5 * 5)),
    ("roi_sampling_ratio", 0, lambda m: m.roi_heads.box_roi_pool.sampling_ratio, 0),
    ("representation_size", 64, _roi_head_widths, (64, 64, 64, 64)),
    ("cls_init_std", 0.05, lambda m: measured_std(m.roi_heads.box_predictor.cls_score),
     pytest.approx(0.05, rel=0.05)),
    ("bbox_init_std", 0.004, lambda m: measured_std(m.roi_heads.box_predictor.bbox_pred),
     pytest.approx(0.004, rel=0.05)),
    ("box_batch_size_per_image", 32, lambda m: m.roi_heads.fg_bg_sampler.batch_size_per_image, 32),
    ("box_fg_iou_thresh", 0.6, lambda m: m.roi_heads.proposal_matcher.high_threshold, 0.6),
    ("box_bg_iou_thresh", 0.4, lambda m: m.roi_heads.proposal_matcher.low_threshold, 0.4),
    ("box_positive_fraction", 0.5, lambda m: m.roi_heads.fg_bg_sampler.positive_fraction, 0.5),
    ("box_score_thresh", 0.3, lambda m: m.roi_heads.score_thresh, 0.3),
    ("box_nms_thresh", 0.4, lambda m: m.roi_heads.nms_thresh, 0.4),
    ("box_detections_per_img", 20, lambda m: m.roi_heads.detections_per_img, 20),
]


def test_every_model_keyword_has_an_override_case():
    keywords = set(inspect.signature(make_faster_rcnn).parameters) - {"backbone"}
    assert {name for name, *_ in OVERRIDES} == keywords


@pytest.mark.parametrize("name, value, read, expected", OVERRIDES, ids=[row[0] for row in OVERRIDES])
def test_override_reaches_the_model_and_its_config(name, value, read, expected):
    defaults = model_config("demo")
    assert defaults[name] != value
    torch.manual_seed(0)
    assert read(build_detector("demo", **{name: value})) == expected
    config = model_config("demo", **{name: value})
    assert config[name] == value
    assert {k: v for k, v in config.items() if k != name} == {k: v for k, v in defaults.items() if k != name}


def test_config_is_plain_json_and_rebuilds_the_same_model():
    config = model_config("demo", anchor_sizes=(24, 48, 96), min_size=288)
    assert set(config) == set(inspect.signature(make_faster_rcnn).parameters)
    assert json.loads(json.dumps(config)) == config
    assert config["anchor_sizes"] == [24, 48, 96] and config["backbone"] == "demo"
    torch.manual_seed(1)
    direct = build_detector("demo", anchor_sizes=(24, 48, 96), min_size=288)
    torch.manual_seed(1)
    rebuilt = build_detector_from_config(json.loads(json.dumps(config)))
    assert str(rebuilt) == str(direct)
    assert rebuilt.rpn.anchor_generator.sizes == ((24, 48, 96),)
    direct_state = direct.state_dict()
    assert all(torch.equal(t, direct_state[k]) for k, t in rebuilt.state_dict().items())


def test_seed_configs_are_the_seed_defaults():
    for backbone in SEED_BACKBONES:
        config = model_config(backbone)
        assert config["backbone"] == backbone and config["num_classes"] == 23
        assert (config["min_size"], config["max_size"]) == (400, 600)
        assert config["anchor_sizes"] == [128, 256, 512] and config["aspect_ratios"] == [0.5, 1.0, 2.0]
        assert (config["rpn_pre_nms_top_n_train"], config["rpn_pre_nms_top_n_test"]) == (6000, 6000)
        assert (config["rpn_post_nms_top_n_train"], config["rpn_post_nms_top_n_test"]) == (2000, 300)
        assert (config["rpn_init_std"], config["cls_init_std"], config["bbox_init_std"]) == (0.01, 0.01, 0.001)
        assert config["representation_size"] == 4096 and config["roi_output_size"] == 7


def test_demo_preset_is_small_and_named_demo():
    torch.manual_seed(0)
    model = build_detector("demo")
    config = model_config("demo")
    assert config["backbone"] == "demo" and config["num_classes"] == 23
    assert (config["min_size"], config["max_size"]) == (320, 320)
    expected = PARAMETER_COUNTS["demo"]
    assert parameter_count(model.backbone) == expected["backbone"]
    assert parameter_count(model.rpn) == expected["rpn"]
    assert parameter_count(model.roi_heads.box_head) == expected["box_head"]
    assert parameter_count(model.roi_heads.box_predictor) == expected["box_predictor"]
    assert parameter_count(model) == expected["total"]
    with torch.no_grad():
        features = model.backbone(torch.rand(1, 3, 320, 320))
    assert features.shape == (1, 128, 40, 40)  # stride 8


def test_a_preset_is_overridable():
    assert model_config("demo", min_size=256)["min_size"] == 256
    assert model_config("demo", representation_size=4096)["representation_size"] == 4096


def test_unknown_override_is_refused_with_its_name():
    with pytest.raises(ValueError, match=r"unknown model setting\(s\): colour, rpn_nms"):
        build_detector("vgg16", rpn_nms=0.5, colour="red")


@pytest.mark.parametrize("backbone", ["vgg19", "", "VGG16"])
def test_unknown_backbone_is_refused_with_the_choices(backbone):
    choices = "choose one of: vgg16, resnet50, demo"
    assert ", ".join(BACKBONES) == "vgg16, resnet50, demo"
    with pytest.raises(ValueError, match=f"unknown backbone '{backbone}'; {choices}"):
        build_detector(backbone)
    with pytest.raises(ValueError, match=f"unknown backbone '{backbone}'; {choices}"):
        build_detector_from_config({"backbone": backbone})


def test_a_config_with_an_unknown_setting_is_refused_by_name():
    # E.g. a checkpoint written by a newer version: a ValueError names the setting (not a TypeError).
    config = {**model_config("demo"), "rpn_conv_depth": 2}
    with pytest.raises(ValueError, match=r"unknown model setting\(s\): rpn_conv_depth"):
        build_detector_from_config(config)


# --- torchvision backbone weights --------------------------------------------------------------------------


TORCHVISION_CLASSIFIERS = {"vgg16": vgg16, "resnet50": resnet50}


def test_torchvision_weights_load_onto_the_backbone(seed_model, seed_backbone):
    torch.manual_seed(2)
    classifier = TORCHVISION_CLASSIFIERS[seed_backbone](weights=None).eval()
    # Random batch-norm values too: fresh ones equal frozen batch norm's, so loading them would not show.
    with torch.no_grad():
        for norm in (m for m in classifier.modules() if isinstance(m, nn.BatchNorm2d)):
            for tensor in (norm.weight, norm.running_var):
                tensor.uniform_(0.5, 1.5)
            for tensor in (norm.bias, norm.running_mean):
                tensor.normal_(0, 0.1)
    backbone = copy.deepcopy(seed_model.backbone)
    mapped = backbone_state_from_torchvision(seed_backbone, classifier.state_dict())
    assert not any(k.startswith(("classifier.", "fc.")) for k in mapped)
    assert not all(torch.equal(backbone.state_dict()[k], v) for k, v in mapped.items() if k in backbone.state_dict())

    result = backbone.load_state_dict(mapped, strict=True)

    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    loaded = backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in mapped.items() if k in loaded)
    # The same network: the classifier's feature layers and the detector's backbone agree on an image.
    trunk = classifier.features[:-1] if seed_backbone == "vgg16" else nn.Sequential(*list(classifier.children())[:-2])
    image = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        expected = trunk(image)
        # Frozen batch norm folds its statistics into one scale and shift: float rounding differs a little.
        torch.testing.assert_close(backbone(image), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_demo_has_no_torchvision_weights_format():
    with pytest.raises(ValueError, match="backbone 'demo' has no torchvision weights format"):
        backbone_state_from_torchvision("demo", {})
