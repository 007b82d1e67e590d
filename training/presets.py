"""The named models this project trains: each a backbone, its model settings and the recipe that trains it.

``--backbone NAME`` of ``training.train`` (and ``training.inspect``) picks a preset: its ``model`` settings go
over the seed's values (the keyword defaults of ``handler.detector.make_faster_rcnn``), and ``--model-override``
over those. Its ``training`` hyper-parameters go over ``training.train``'s defaults where a tool trains the
preset by its ``recipe`` (``make demo-model``, ``make bench-accuracy``, the tests' training run). A new model's
whole configuration (``model_config``) is written into its checkpoints, from which serving rebuilds it: serving
reads no preset.
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, field
from typing import Any, Mapping

from torchvision.models.detection import FasterRCNN

from handler.detector import backbone_norm_for, build_detector_from_config, make_faster_rcnn, refuse_unknown_settings


@dataclass(frozen=True, kw_only=True)
class Preset:
    """One named model and the recipe that trains it.

    Args:
        name: what ``--backbone`` takes.
        backbone: a backbone of ``handler.detector.BACKBONES``.
        model: model settings over the seed's values (keywords of ``make_faster_rcnn``).
        training: ``training.train`` options (by their argparse names) over its defaults.
    """

    name: str
    backbone: str
    model: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)

    @property
    def recipe(self) -> list[str]:
        """``training.train``'s arguments that train this preset: ``--backbone`` and the hyper-parameters."""
        options = ([f"--{name.replace('_', '-')}", str(value)] for name, value in self.training.items())
        return ["--backbone", self.name, *itertools.chain.from_iterable(options)]


# The seed's models: the seed's values are make_faster_rcnn's defaults, and training.train's are its recipe.
VGG16 = Preset(name="vgg16", backbone="vgg16")
RESNET50 = Preset(name="resnet50", backbone="resnet50")
# NOT the seed's model: a 2.4-million-parameter network small enough to learn on a 2-core CPU in minutes, for
# the demo service and the tests.
DEMO = Preset(
    name="demo",
    backbone="demo",
    model={
        # The seed's 2:3 ratio of min_size to max_size: a 4:3 photo keeps a 320 px short side.
        "min_size": 320,
        "max_size": 480,
        "anchor_sizes": [32, 64, 128],
        # The RPN keeps its pre_nms_top_n best-scored anchors, and NMS leaves near-copies that overlap less
        # than rpn_nms_thresh. A 640x480 photo gives 20,160 anchors at this size, and a crowd of mid-sized
        # objects (20 blood cells, ~36 anchors each) filled a budget of 600 before any small object's best
        # anchor (README: Accuracy on real photos). 2000 is ~10% of the anchors; NMS at 0.6 keeps fewer copies
        # of each object within the 100 proposals the box head scores (its cost unchanged; ~3% slower in all).
        "rpn_pre_nms_top_n_train": 2000,
        "rpn_pre_nms_top_n_test": 2000,
        "rpn_post_nms_top_n_train": 500,
        "rpn_post_nms_top_n_test": 100,
        "rpn_nms_thresh": 0.6,
        "representation_size": 256,
        # Half the RoIs and one sample per RoIAlign bin: RoIAlign's backward pass dominated a CPU step.
        "roi_sampling_ratio": 1,
        "box_batch_size_per_image": 64,
    },
    # SGD at 40x the seed's LR, with warm-up and batches of 8: a small network trained from scratch learns fast
    # enough to be useful on a 2-core CPU in minutes.
    training={"batch_size": 8, "lr": 0.04, "warmup_iters": 50},
)
PRESETS = {preset.name: preset for preset in (VGG16, RESNET50, DEMO)}
DEFAULT_PRESET = VGG16.name  # the seed's model


def model_config(preset: str = DEFAULT_PRESET, num_classes: int = 23, *, pretrained: bool = False,
                 **overrides: Any) -> dict[str, Any]:
    """The complete, plain configuration of a new model: seed defaults, then the preset, then ``overrides``.

    Args:
        preset: a name of ``PRESETS``.
        pretrained: whether the backbone starts from pretrained weights, which decides its ``backbone_norm``
            (``handler.detector.backbone_norm_for``).

    Raises:
        ValueError: for an unknown preset or an unknown override name.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown backbone {preset!r}; choose one of: {', '.join(PRESETS)}")
    refuse_unknown_settings(overrides)
    defaults = {name: p.default for name, p in inspect.signature(make_faster_rcnn).parameters.items()}
    chosen = PRESETS[preset]
    config = {**defaults, "backbone_norm": backbone_norm_for(pretrained=pretrained), **chosen.model, **overrides,
              "backbone": chosen.backbone, "num_classes": num_classes}
    return {name: _plain(value) for name, value in config.items()}


def build_detector(preset: str = DEFAULT_PRESET, num_classes: int = 23, **overrides: Any) -> FasterRCNN:
    """A new model of ``preset`` with random weights."""
    return build_detector_from_config(model_config(preset, num_classes, **overrides))


def _plain(value: Any) -> Any:
    """Tuples become lists so the config is a plain, JSON-able value that ``weights_only`` loads."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value
