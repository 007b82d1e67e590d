"""The model definition: every seed value, read off the torchvision modules of the built models.

All weights are random (nothing is downloaded). The two seed models are big (137 M and 490 M parameters), so each
is built once per module; one forward pass of either takes seconds on this CPU, a training step of resnet50
tens of seconds and 9 GB, so training steps run on small images, with a narrow RoI head (resnet50) or on the
demo preset.
"""

from __future__ import annotations

import inspect
import json
import math
import random
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn
from torchvision.io import ImageReadMode, decode_image
from torchvision.models.detection import FasterRCNN
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign, box_iou

from handler.checkpoint import load_checkpoint, model_from_checkpoint
from handler.detector import BACKBONE_NORMS, BACKBONES, build_detector_from_config, make_faster_rcnn
from training.presets import PRESETS, build_detector, model_config
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
# resnet50: backbone = torchvision resnet50 25,557,032 - fc 2,049,000 = 23,508,032 (trainable batch norm; frozen
#           batch norm keeps its 53,120 affine values as buffers); RPN 37,750,784 + 18,441 + 73,764; fc6
#           411,045,888.
PARAMETER_COUNTS = {
    "vgg16": {"backbone": 14_714_688, "rpn": 2_382_893, "box_head": 119_545_856, "box_predictor": 471_155,
              "total": 137_114_592},
    "resnet50": {"backbone": 23_508_032, "rpn": 37_842_989, "box_head": 427_827_200, "box_predictor": 471_155,
                 "total": 489_649_376},
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


# --- backbone normalisation ------------------------------------------------------------------------------


def norm_layer_types(model: FasterRCNN) -> set[type]:
    return {type(m) for m in model.backbone.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))}


def test_resnet50_from_random_weights_keeps_its_activations_normalised():
    images = torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    stage_stds = {}
    for norm in BACKBONE_NORMS:
        torch.manual_seed(0)
        body = build_detector("resnet50", backbone_norm=norm, representation_size=64).backbone.train()
        features, stage_stds[norm] = images, []
        with torch.no_grad():
            for name, layer in body.named_children():
                features = layer(features)
                if name.startswith("layer"):
                    stage_stds[norm].append(features.std().item())
    assert all(0.3 < std < 3 for std in stage_stds["batch_norm"]), stage_stds
    # Frozen batch norm is an identity at random init: the activations grow stage by stage (0.6 to 32 here).
    assert stage_stds["frozen_batch_norm"][-1] > 10 * stage_stds["frozen_batch_norm"][0], stage_stds


def test_resnet50_from_random_weights_learns_in_a_few_cpu_steps(tmp_path):
    # The seed's RoI head (two 4096-wide layers, 128 RoIs per image) would cost ~600 GFLOP per step on its own:
    # a 256-wide head and 32 RoIs here; the backbone and RPN are the seed's.
    torch.manual_seed(0)
    model = build_detector("resnet50", min_size=128, max_size=160, representation_size=256,
                           box_batch_size_per_image=32).train()
    assert norm_layer_types(model) == {nn.BatchNorm2d}
    image, target = scene(tmp_path, width=320, height=240, seed=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(5):
        loss = sum(model([image], [target]).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(loss) for loss in losses), losses
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses


@pytest.mark.parametrize("backbone, norm_type", [("resnet50", FrozenBatchNorm2d), ("demo", nn.BatchNorm2d)])
def test_a_config_from_before_backbone_norm_rebuilds_its_model(backbone, norm_type):
    old_norm = "frozen_batch_norm" if norm_type is FrozenBatchNorm2d else "batch_norm"
    config = model_config(backbone, representation_size=64, backbone_norm=old_norm)
    state = build_detector_from_config(config).state_dict()
    del config["backbone_norm"]

    model = build_detector_from_config(config)

    assert norm_layer_types(model) == {norm_type}
    model.load_state_dict(state)  # strict: batch norm has a num_batches_tracked buffer, frozen batch norm none


def test_unknown_backbone_norm_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown backbone_norm 'group_norm'; choose one of: batch_norm, "
                                         "frozen_batch_norm"):
        build_detector("demo", backbone_norm="group_norm")


# --- half precision ----------------------------------------------------------------------------------------


def same_class_overlaps(detections: dict[str, torch.Tensor], iou_threshold: float) -> int:
    """Pairs of detections of one class that overlap more than NMS lets through (IoU in float64)."""
    overlaps = 0
    for label in detections["labels"].unique():
        boxes = detections["boxes"][detections["labels"] == label].double()
        overlaps += int((box_iou(boxes, boxes).triu(diagonal=1) > iou_threshold).sum())
    return overlaps


def test_float16_autocast_decides_nms_in_float32_near_the_per_class_offset(tmp_path):
    # batched_nms shifts the boxes of label k by k x (largest coordinate + 1) so classes never overlap: label 22
    # in a 600 px frame lands near 13,000, where float16 steps by 8 px and decides same-class overlaps wrongly.
    # torchvision takes that path for up to 1000 boxes on the CPU (5000 on a GPU): 20 pairs of proposals x 22
    # classes here, each pair overlapping by IoU 0.45-0.55, so NMS has a close decision for every pair and class.
    torch.manual_seed(0)
    model = build_detector("demo", min_size=400, max_size=600, box_score_thresh=0.0,
                           box_detections_per_img=1000).eval()
    image, _ = scene(tmp_path, width=600, height=400, seed=5)
    generator = torch.Generator().manual_seed(1)
    corner = torch.rand(20, 2, generator=generator) * torch.tensor([480.0, 280.0])
    size = 40 + torch.rand(20, 2, generator=generator) * 80
    first = torch.cat([corner, corner + size], dim=1)
    iou = 0.45 + 0.1 * torch.rand(20, generator=generator)
    shift = size[:, 0] * (1 - iou) / (1 + iou)  # a box moved right by d overlaps by (w - d) / (w + d)
    second = first + torch.stack([shift, torch.zeros(20), shift, torch.zeros(20)], dim=1)
    with torch.inference_mode():
        images, _ = model.transform([image])
        assert images.image_sizes == [(400, 600)]
        features = OrderedDict([("0", model.backbone(images.tensors))])
        with torch.autocast("cpu", dtype=torch.float16):
            (detections,), _ = model.roi_heads(features, [torch.cat([first, second])], images.image_sizes)

    assert len(detections["boxes"]) > 20 * 22  # at least one box of each pair and class
    # NMS on float16 boxes and offsets kept 74 such pairs.
    assert same_class_overlaps(detections, model.roi_heads.nms_thresh) == 0
    assert detections["boxes"].dtype == detections["scores"].dtype == torch.float32


def test_float16_autocast_gives_the_float32_detections(trained_checkpoint, tmp_path):
    state = load_checkpoint(trained_checkpoint)
    model = model_from_checkpoint(state).eval()
    image, _ = scene(tmp_path, width=320, height=320, seed=6)
    with torch.inference_mode():
        (expected,) = model([image])
        with torch.autocast("cpu", dtype=torch.float16):
            (found,) = model([image])
    assert found["boxes"].dtype == found["scores"].dtype == torch.float32
    confident = expected["scores"] >= 0.5
    assert confident.sum() >= 2
    assert torch.equal(found["labels"][confident], expected["labels"][confident])
    torch.testing.assert_close(found["scores"][confident], expected["scores"][confident], rtol=0, atol=0.02)
    torch.testing.assert_close(found["boxes"][confident], expected["boxes"][confident], rtol=0, atol=2.0)


# --- overrides, presets and the plain config --------------------------------------------------------------


def _roi_head_widths(model: FasterRCNN) -> tuple[int, ...]:
    box_head = model.roi_heads.box_head
    return (box_head.fc6.out_features, box_head.fc7.in_features, box_head.fc7.out_features,
            model.roi_heads.box_predictor.cls_score.in_features)


# Each keyword of make_faster_rcnn (but the backbone), a value that is neither the seed default nor the demo
# preset's, where it shows on the built demo model, and what it must read there.
OVERRIDES: list[tuple[str, Any, Callable[[FasterRCNN], Any], Any]] = [
    ("backbone_norm", "frozen_batch_norm", lambda m: {type(layer) for layer in m.backbone[1::3]},
     {FrozenBatchNorm2d}),
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
    ("rpn_nms_thresh", 0.65, lambda m: m.rpn.nms_thresh, 0.65),
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
    assert (config["min_size"], config["max_size"]) == (320, 480)
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
    assert ", ".join(BACKBONES) == ", ".join(PRESETS) == "vgg16, resnet50, demo"
    with pytest.raises(ValueError, match=f"unknown backbone '{backbone}'; {choices}"):
        build_detector(backbone)
    with pytest.raises(ValueError, match=f"unknown backbone '{backbone}'; {choices}"):
        build_detector_from_config({"backbone": backbone})


def test_a_config_with_an_unknown_setting_is_refused_by_name():
    # E.g. a checkpoint written by a newer version: a ValueError names the setting (not a TypeError).
    config = {**model_config("demo"), "rpn_conv_depth": 2}
    with pytest.raises(ValueError, match=r"unknown model setting\(s\): rpn_conv_depth"):
        build_detector_from_config(config)
