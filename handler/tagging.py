"""The tagging core: a checkpoint in, detections and tag responses out. It knows nothing of TorchServe,
so the client, the benchmarks or another server can use it as is.

Images go to the model as one list of tensors of their own sizes (torchvision resizes and batches them);
boxes come back in each original image's pixels.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torchvision.models.detection import FasterRCNN

from .checkpoint import load_checkpoint, model_from_checkpoint
from .decode import ImageError
from .request_parsing import RequestError

# torchvision resizes an image so its long side fits max_size; a very thin image (4000x1) then gets a short
# side that rounds to 0 pixels and the resize crashes. Such images are padded until their resized short side
# is at least this many pixels: one cell of the coarsest (stride 32) feature map.
MIN_RESIZED_SIDE = 32


@dataclass(frozen=True)
class Detection:
    """One object: its label name, score in [0, 1] and box ``(x1, y1, x2, y2)`` in original image pixels."""

    label: str
    score: float
    box: tuple[float, float, float, float]

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": round(self.score, 4), "box": [round(v, 2) for v in self.box]}


class Tagger:
    """A Faster R-CNN in eval mode on one device, with the names of its classes.

    Args:
        model: a torchvision ``FasterRCNN`` (e.g. ``model_from_checkpoint(state)``).
        class_names: ``class_names[i]`` names model label ``i + 1`` (label 0 is the background).
        device: where the model runs.
        half_precision: run in float16 autocast on CUDA (ignored on CPU).
        channels_last: use the channels-last memory format on CUDA (ignored on CPU).
    """

    def __init__(
        self,
        *,
        model: FasterRCNN,
        class_names: Sequence[str],
        device: str | torch.device = "cpu",
        half_precision: bool = False,
        channels_last: bool = False,
    ) -> None:
        outputs = model.roi_heads.box_predictor.cls_score.out_features
        if outputs != len(class_names) + 1:
            raise ValueError(f"the model has {outputs} classes but {len(class_names)} class names (+1 background)")
        self.device = torch.device(device)
        self.class_names = list(class_names)
        on_gpu = self.device.type == "cuda"
        self.model = model.to(self.device).eval()
        if channels_last and on_gpu:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._half_precision = half_precision and on_gpu

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        half_precision: bool = False,
        channels_last: bool = False,
    ) -> Tagger:
        """Rebuilds the model from an ``Epoch.N.pth`` file alone (read with ``weights_only=True``).

        Raises:
            CheckpointError: the file is missing or not a checkpoint of this project.
        """
        state = load_checkpoint(path)
        return cls(
            model=model_from_checkpoint(state),
            class_names=state["class_names"],
            device=device,
            half_precision=half_precision,
            channels_last=channels_last,
        )

    def detect(self, images: Sequence[torch.Tensor]) -> list[list[Detection]]:
        """Runs the model once on all images and returns each image's detections, best score first.

        Args:
            images: float tensors ``[3, H, W]`` with values in [0, 1], each of its own size.
        """
        if not images:
            return []
        batch = [self._pad_thin(image).to(self.device) for image in images]
        with torch.inference_mode(), torch.autocast(
            device_type=self.device.type, dtype=torch.float16, enabled=self._half_precision
        ):
            outputs = self.model(batch)
        return [
            self._detections(output, width=image.shape[-1], height=image.shape[-2])
            for output, image in zip(outputs, images)
        ]

    def _pad_thin(self, image: torch.Tensor) -> torch.Tensor:
        """Pads the short side (bottom or right, so boxes keep their coordinates) of an extreme image."""
        transform = self.model.transform
        height, width = image.shape[-2:]
        short, long = min(height, width), max(height, width)
        scale = min(transform.min_size[-1] / short, transform.max_size / long)
        if short * scale >= MIN_RESIZED_SIDE:
            return image
        padded_short = math.ceil(MIN_RESIZED_SIDE * long / transform.max_size)
        size = (padded_short, width) if height == short else (height, padded_short)
        # The mean colour normalises to 0, the value torchvision itself pads batches with.
        mean = torch.as_tensor(transform.image_mean, dtype=image.dtype).view(3, 1, 1)
        padded = mean.expand(3, *size).clone()
        padded[:, :height, :width] = image
        return padded

    def _detections(self, output: dict[str, torch.Tensor], *, width: int, height: int) -> list[Detection]:
        limits = torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes = output["boxes"].float().cpu().clamp(min=torch.zeros(4), max=limits)
        scores = output["scores"].float().cpu()
        labels = output["labels"].cpu()
        # Boxes that lay wholly in the padding have no area left after clipping.
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        order = scores[keep].argsort(descending=True, stable=True)
        return [
            Detection(label=self.class_names[int(label) - 1], score=float(score), box=tuple(box.tolist()))
            for box, score, label in zip(boxes[keep][order], scores[keep][order], labels[keep][order])
        ]


def detections_above(
    detections: Iterable[Detection], *, threshold: float, max_detections: int | None = None
) -> list[Detection]:
    """The detections scoring at least ``threshold``, best first, at most ``max_detections`` of them."""
    kept = sorted((d for d in detections if d.score >= threshold), key=lambda d: d.score, reverse=True)
    return kept if max_detections is None else kept[:max_detections]


def detections_to_tags(detections: Iterable[Detection], *, threshold: float = 0.0) -> list[str]:
    """The distinct labels scoring at least ``threshold``, ordered by their best score."""
    return list(dict.fromkeys(d.label for d in detections_above(detections, threshold=threshold)))


def response_dict(
    detections: Iterable[Detection], *, width: int, height: int, threshold: float, max_detections: int | None = None
) -> dict[str, Any]:
    """The dict version: ``{"tags", "detections": [{"label", "score", "box"}], "width", "height"}``."""
    kept = detections_above(detections, threshold=threshold, max_detections=max_detections)
    return {
        "tags": detections_to_tags(kept),
        "detections": [d.as_dict() for d in kept],
        "width": int(width),
        "height": int(height),
    }


def response_list(
    detections: Iterable[Detection], *, threshold: float, max_detections: int | None = None
) -> list[str]:
    """The list version: the tags alone, e.g. ``["dog", "person"]``."""
    return detections_to_tags(detections_above(detections, threshold=threshold, max_detections=max_detections))


def format_response(
    detections: Iterable[Detection],
    *,
    response_format: str,
    width: int,
    height: int,
    threshold: float,
    max_detections: int | None = None,
) -> dict[str, Any] | list[str]:
    """The response of one image in the asked format ("dict" or "list")."""
    if response_format == "dict":
        return response_dict(detections, width=width, height=height, threshold=threshold, max_detections=max_detections)
    if response_format == "list":
        return response_list(detections, threshold=threshold, max_detections=max_detections)
    raise ValueError(f"unknown response format {response_format!r}")


def error_response(error: RequestError | ImageError) -> dict[str, str]:
    """The JSON body of a refused request: its short code and its message."""
    return {"error": error.error, "message": str(error)}
