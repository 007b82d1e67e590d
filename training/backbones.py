"""What a backbone starts training from (``--backbone-weights``): ImageNet weights, a local file, or nothing.

``imagenet`` goes through torchvision's weights API: the file lives in the torch cache
(``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``); a machine with internet
downloads it there once, as torchvision does. A machine without internet needs the file put there by hand:
the error names it and the folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

import torch
from torchvision.models import ResNet50_Weights, VGG16_Weights

from handler.text import error_line

# The classification weights each backbone's detector starts from, as in the Faster R-CNN paper.
IMAGENET_WEIGHTS = {"vgg16": VGG16_Weights.IMAGENET1K_V1, "resnet50": ResNet50_Weights.IMAGENET1K_V1}


def default_backbone_weights(backbone: str) -> str:
    """``imagenet`` for the backbones that have ImageNet weights, ``none`` for the others (demo)."""
    return "imagenet" if backbone in IMAGENET_WEIGHTS else "none"


def backbone_start_state(backbone: str, weights: str) -> dict[str, torch.Tensor] | None:
    """The state dict ``model.backbone`` starts from, or None for random weights.

    Args:
        backbone: a backbone name of ``handler.detector.BACKBONES``.
        weights: ``imagenet``, ``none`` or the path of a torchvision classification state dict.

    Raises:
        ValueError: one line: no ImageNet weights for this backbone, the ImageNet file is neither cached nor
            downloadable (naming the file and the folder to put it in), or an unreadable file.
    """
    if weights == "none":
        return None
    if weights == "imagenet":
        return backbone_state_from_torchvision(backbone, imagenet_state_dict(backbone))
    path = Path(weights)
    if not path.is_file():
        raise ValueError(f"backbone weights not found: {path} (give imagenet, none or a state dict file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return backbone_state_from_torchvision(backbone, state)
    except Exception as exc:  # not a state dict, or of another network
        raise ValueError(f"cannot load {path} into the {backbone} backbone: {error_line(exc)}") from None


def imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet classification weights of ``backbone``, from the torch cache or downloaded into it.

    Raises:
        ValueError: see ``backbone_start_state``.
    """
    if backbone not in IMAGENET_WEIGHTS:
        raise ValueError(f"the {backbone} backbone has no ImageNet weights: give --backbone-weights none or a file")
    weights = IMAGENET_WEIGHTS[backbone]
    cached = imagenet_file(backbone)
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Opens the URL before it shows a progress bar, so an offline machine fails here without output.
            torch.hub.download_url_to_file(weights.url, str(cached), progress=True)
        except OSError as exc:
            raise ValueError(
                f"cannot download the ImageNet weights of {backbone} ({error_line(exc)}): put {cached.name} "
                f"(from {weights.url}) into {cached.parent}") from None
    return weights.get_state_dict(progress=False)


def imagenet_file(backbone: str) -> Path:
    """Where torchvision keeps the ImageNet weights of ``backbone`` (the torch cache)."""
    url = IMAGENET_WEIGHTS[backbone].url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def backbone_state_from_torchvision(backbone: str, state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Maps a torchvision classification state dict (e.g. ImageNet VGG16) onto ``model.backbone``.

    The classifier's weights (``classifier.*`` / ``fc.*``) are left out; they have no place in the detector.
    """
    if backbone == "vgg16":
        prefix = "features."
        return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if backbone == "resnet50":
        return {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    raise ValueError(f"backbone {backbone!r} has no torchvision weights format")
