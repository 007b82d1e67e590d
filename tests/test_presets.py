"""The presets: each one named thing (backbone, model settings, recipe), and backbone_norm decided in one place."""

from __future__ import annotations

import inspect

import pytest

from handler.detector import BACKBONES, backbone_norm_for, make_faster_rcnn
from training import train
from training.presets import DEMO, PRESETS, model_config


def test_the_demo_recipe_is_the_training_clis_arguments():
    assert DEMO.recipe == ["--backbone", "demo", "--batch-size", "8", "--lr", "0.04", "--warmup-iters", "50"]
    args = train.get_args_parser().parse_args(["--data", "data/synthetic", *DEMO.recipe])
    assert (args.backbone, args.batch_size, args.lr, args.warmup_iters) == ("demo", 8, 0.04, 50)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_names_only_known_settings_and_options(name):
    preset = PRESETS[name]
    options = {action.dest for action in train.get_args_parser()._actions}
    assert preset.name == name and preset.backbone in BACKBONES
    assert set(preset.model) <= set(inspect.signature(make_faster_rcnn).parameters) - {"backbone", "num_classes"}
    assert set(preset.training) <= options - {"backbone", "data"}
    assert {key: model_config(name)[key] for key in preset.model} == preset.model


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_backbone_norm_follows_what_the_backbone_starts_from(name):
    assert model_config(name)["backbone_norm"] == backbone_norm_for(pretrained=False) == "batch_norm"
    assert model_config(name, pretrained=True)["backbone_norm"] == backbone_norm_for(pretrained=True) \
        == "frozen_batch_norm"
    assert model_config(name, pretrained=True, backbone_norm="batch_norm")["backbone_norm"] == "batch_norm"
