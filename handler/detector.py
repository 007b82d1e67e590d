"""The one Faster R-CNN definition, shared by training and the TorchServe handler.

Every hyper-parameter of the seed specification is a keyword default of ``make_faster_rcnn``.
A model's whole configuration is a plain dict (made by ``training/presets.py``'s ``model_config``) that
travels inside checkpoints, so ``build_detector_from_config(checkpoint["model_config"])`` rebuilds exactly the
trained model. Nothing here reads files, flags or the environment: this module is packed into the model archive
as is, so what only training needs (the presets, ImageNet weights) lives in ``training/``.

Under autocast (float16 on a GPU, bfloat16 on a CPU: ``handler/precision.py``) the convolutions and linear
layers run in the reduced type, but everything that computes coordinates stays in float32: the feature maps
(so the anchors), the whole RPN head (its scores rank the anchors: ``Float32RPNHead``) and the box predictor's
outputs (so proposals, box decoding, NMS and the scaling back to the original image). In float16
a coordinate near 13,000 steps by 8 px, and ``batched_nms`` shifts each class's boxes by ``label x (image size
+ 1)`` so they never overlap another class's: same-class boxes would be kept or suppressed by those 8 px.
bfloat16 keeps 8 bits of mantissa, so there a coordinate near 400 already steps by 2 px.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torchvision.models import resnet50, vgg16
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

BACKBONES = ("vgg16", "resnet50", "demo")
# How the backbone normalises (resnet50 and demo; vgg16 has no normalisation layers): batch_norm learns
# from random weights; frozen_batch_norm keeps the statistics and affine values of pretrained weights as they
# are (batches of 1-2 images per GPU would blur them) and is an identity at random init, so it cannot train.
BACKBONE_NORMS = {"batch_norm": nn.BatchNorm2d, "frozen_batch_norm": FrozenBatchNorm2d}

_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]


def make_faster_rcnn(
    *,
    backbone: str = "vgg16",
    backbone_norm: str,
    num_classes: int = 23,
    min_size: int = 400,
    max_size: int = 600,
    image_mean: Sequence[float] = tuple(_IMAGENET_MEAN),
    image_std: Sequence[float] = tuple(_IMAGENET_STD),
    anchor_sizes: Sequence[int] = (128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    rpn_pre_nms_top_n_train: int = 6000,
    rpn_pre_nms_top_n_test: int = 6000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_test: int = 300,
    rpn_nms_thresh: float = 0.7,
    rpn_fg_iou_thresh: float = 0.7,
    rpn_bg_iou_thresh: float = 0.3,
    rpn_batch_size_per_image: int = 256,
    rpn_positive_fraction: float = 0.5,
    rpn_init_std: float = 0.01,
    roi_output_size: int = 7,
    roi_sampling_ratio: int = 2,
    representation_size: int = 4096,
    cls_init_std: float = 0.01,
    bbox_init_std: float = 0.001,
    box_batch_size_per_image: int = 128,
    box_fg_iou_thresh: float = 0.5,
    box_bg_iou_thresh: float = 0.5,
    box_positive_fraction: float = 0.25,
    box_score_thresh: float = 0.05,
    box_nms_thresh: float = 0.5,
    box_detections_per_img: int = 100,
) -> FasterRCNN:
    """Builds a torchvision ``FasterRCNN`` on one feature map of the chosen backbone.

    Args:
        backbone: ``vgg16`` (conv layers, 512 channels, stride 16), ``resnet50`` (up to layer4, 2048
            channels, stride 32) or ``demo`` (small CNN, 128 channels, stride 8). Weights start random.
        backbone_norm: a key of ``BACKBONE_NORMS``, as ``backbone_norm_for`` decides it.
        num_classes: object classes plus one for the background.
        anchor_sizes / aspect_ratios: the one-level anchor grid (sizes x ratios anchors per position).
        rpn_init_std: standard deviation of the RPN head's Gaussian initialisation (biases zero).
        representation_size: width of both FC layers of the RoI head.
        cls_init_std / bbox_init_std: Gaussian initialisation of the predictor (biases zero).
        The other arguments are torchvision's ``FasterRCNN`` arguments of the same name.
    """
    body, out_channels = _make_backbone(backbone, norm=backbone_norm)
    anchor_generator = AnchorGenerator(
        sizes=(tuple(int(s) for s in anchor_sizes),),
        aspect_ratios=(tuple(float(r) for r in aspect_ratios),),
    )
    roi_pool = MultiScaleRoIAlign(
        featmap_names=["0"], output_size=roi_output_size, sampling_ratio=roi_sampling_ratio
    )
    box_head = TwoMLPHead(out_channels * roi_output_size**2, representation_size)
    box_predictor = FastRCNNPredictor(representation_size, num_classes)
    # Made where FasterRCNN would make its own RPNHead, so a seed draws the same weights as before.
    rpn_head = Float32RPNHead(out_channels, anchor_generator.num_anchors_per_location()[0])
    model = FasterRCNN(
        body,
        min_size=min_size,
        max_size=max_size,
        image_mean=list(image_mean),
        image_std=list(image_std),
        rpn_anchor_generator=anchor_generator,
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        rpn_nms_thresh=rpn_nms_thresh,
        rpn_fg_iou_thresh=rpn_fg_iou_thresh,
        rpn_bg_iou_thresh=rpn_bg_iou_thresh,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        rpn_positive_fraction=rpn_positive_fraction,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=box_predictor,
        box_score_thresh=box_score_thresh,
        box_nms_thresh=box_nms_thresh,
        box_detections_per_img=box_detections_per_img,
        box_fg_iou_thresh=box_fg_iou_thresh,
        box_bg_iou_thresh=box_bg_iou_thresh,
        box_batch_size_per_image=box_batch_size_per_image,
        box_positive_fraction=box_positive_fraction,
    )
    _init_normal(model.rpn.head.modules(), std=rpn_init_std)
    _init_normal([box_predictor.cls_score], std=cls_init_std)
    _init_normal([box_predictor.bbox_pred], std=bbox_init_std)
    for module in (body, model.rpn.head, box_predictor):
        module.register_forward_hook(_float32_outputs)
    return model


def backbone_norm_for(*, pretrained: bool) -> str:
    """The ``backbone_norm`` of a backbone that starts from pretrained weights (their statistics stay as they are)
    or from random ones (it learns its own)."""
    return "frozen_batch_norm" if pretrained else "batch_norm"


def build_detector_from_config(config: Mapping[str, Any]) -> FasterRCNN:
    """Rebuilds a model from a dict made by ``model_config`` (e.g. the one stored in a checkpoint).

    Raises:
        ValueError: for a setting this version does not know (e.g. from a newer version's checkpoint).
    """
    refuse_unknown_settings(config)
    # Checkpoints written before backbone_norm existed: resnet50 always started from ImageNet weights, demo from
    # random ones.
    legacy_norm = backbone_norm_for(pretrained=config.get("backbone") == "resnet50")
    return make_faster_rcnn(**{"backbone_norm": legacy_norm, **config})


def refuse_unknown_settings(settings: Mapping[str, Any]) -> None:
    """Raises ValueError naming every key of ``settings`` that is no keyword of ``make_faster_rcnn``."""
    unknown = sorted(set(settings) - set(inspect.signature(make_faster_rcnn).parameters))
    if unknown:
        raise ValueError(f"unknown model setting(s): {', '.join(unknown)}")


def _make_backbone(name: str, *, norm: str) -> tuple[nn.Module, int]:
    if norm not in BACKBONE_NORMS:
        raise ValueError(f"unknown backbone_norm {norm!r}; choose one of: {', '.join(BACKBONE_NORMS)}")
    norm_layer = BACKBONE_NORMS[norm]
    if name == "vgg16":
        # The conv layers without the last max-pool: stride 16, as in the original Faster R-CNN.
        body = vgg16(weights=None).features[:-1]
        out_channels = 512
    elif name == "resnet50":
        net = resnet50(weights=None, norm_layer=norm_layer)
        body = nn.Sequential(
            OrderedDict((n, getattr(net, n)) for n in
                        ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"))
        )
        out_channels = 2048
    elif name == "demo":
        body, out_channels = _demo_trunk(norm_layer), 128
    else:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    body.out_channels = out_channels
    return body, out_channels


def _demo_trunk(norm_layer: type[nn.Module]) -> nn.Sequential:
    """3x3 conv-BN-ReLU layers giving one 128-channel map at stride 8.

    The last two are dilated so the receptive field (about 110 px) spans the largest demo objects.
    """
    layers: list[nn.Module] = []
    widths = [(3, 32, 2, 1), (32, 32, 1, 1), (32, 64, 2, 1), (64, 64, 1, 1), (64, 128, 2, 1), (128, 128, 1, 1),
              (128, 128, 1, 2), (128, 128, 1, 2)]
    for c_in, c_out, stride, dilation in widths:
        layers += [
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
            norm_layer(c_out),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


def _init_normal(modules, *, std: float) -> None:
    for module in modules:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            nn.init.zeros_(module.bias)


class Float32RPNHead(RPNHead):
    """torchvision's RPN head (the same weights and names), computing in float32 under autocast too.

    Its objectness scores rank every anchor (20,160 for a 427x320 input) and only the best few hundred become
    proposals. In bfloat16 (8 bits of mantissa) near-tied scores swap places: on the raccoon test photos the
    demo model's mAP@0.5 fell from 0.760 to 0.711 with the whole model in bfloat16, and came back to 0.768 with
    this head alone in float32 (the box head or the backbone in float32 changed nothing). It is a small share
    of the model's work (one 3x3 convolution on the feature map).
    """

    def forward(self, x: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.autocast(x[0].device.type, enabled=False):
            return super().forward([feature.float() for feature in x])


def _float32_outputs(module: nn.Module, inputs: Any, output: Any) -> Any:
    """Forward hook: the module's half-precision outputs in float32 (a no-op outside autocast)."""
    if torch.is_tensor(output):
        return output.float() if output.dtype in (torch.float16, torch.bfloat16) else output
    if isinstance(output, dict):
        return type(output)((key, _float32_outputs(module, inputs, value)) for key, value in output.items())
    if isinstance(output, (list, tuple)):
        return type(output)(_float32_outputs(module, inputs, value) for value in output)
    return output
