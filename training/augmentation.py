"""Data augmentation applied to (image tensor, target) pairs; the model itself resizes and normalises."""

from __future__ import annotations

import torch


class RandomHorizontalFlip:
    """Mirrors the image and its boxes with probability ``p``."""

    def __init__(self, *, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        if torch.rand(1).item() >= self.p:
            return image, target
        width = image.shape[-1]
        boxes = target["boxes"].clone()
        boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
        return image.flip(-1), {**target, "boxes": boxes}


def train_transforms(*, hflip_prob: float = 0.5) -> RandomHorizontalFlip | None:
    return RandomHorizontalFlip(p=hflip_prob) if hflip_prob > 0 else None
