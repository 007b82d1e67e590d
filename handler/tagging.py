"""The tagging core: a checkpoint in, detections and tag responses out. It knows nothing of TorchServe or of
reading requests, so the client, the benchmarks or another server can use it as is: it returns detections, a
``ModelFailure`` for an image the model failed on, and raises ``ImageError`` for an upload it cannot decode.
An ``ImageError`` names the HTTP status and short code that answer it (``handler/decode.py``), so every server
built on the core (TorchServe's handler, the benchmark's plain one) refuses a bad upload alike.

An upload is decoded straight to the model's input size in 8 bits (``Tagger.load_image``); images go to the
model as one list of tensors of their own sizes (torchvision resizes and batches them); boxes come back in
each uploaded image's pixels, best score first. A response is then cut to its threshold once
(``detections_above``) and formatted (``format_response``).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torchvision.models.detection import FasterRCNN

from .checkpoint import load_checkpoint, model_from_checkpoint
from .decode import ModelImage, ModelInputSize, decode_for_model
from .onnx_runtime import OnnxDetector
from .precision import autocast_dtype, reduced_precision, resolve_cpu_runtime
from .text import error_line

logger = logging.getLogger(__name__)

# torchvision resizes an image so its long side fits max_size; a very thin image (4000x1) then gets a short
# side that rounds to 0 pixels and the resize crashes. Such images are padded until their resized short side
# is at least this many pixels: one cell of the coarsest (stride 32) feature map.
MIN_RESIZED_SIDE = 32
# Reported boxes are rounded to this many decimals; a box must stay wider and higher than their precision.
BOX_DECIMALS = 2


@dataclass(frozen=True)
class Detection:
    """One object: its label name, score in [0, 1] and box ``(x1, y1, x2, y2)`` in original image pixels."""

    label: str
    score: float
    box: tuple[float, float, float, float]

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": round(self.score, 4), "box": [round(v, BOX_DECIMALS) for v in self.box]}


@dataclass(frozen=True)
class ModelFailure:
    """An image the model failed on by itself (``Tagger.detect_with_fallback``).

    Args:
        reason: the model's exception as one line, ``Type: message``.
    """

    reason: str


class Tagger:
    """A Faster R-CNN in eval mode on one device, with the names of its classes.

    Args:
        model: a torchvision ``FasterRCNN`` (e.g. ``model_from_checkpoint(state)``).
        class_names: ``class_names[i]`` names model label ``i + 1`` (label 0 is the background).
        device: where the model runs.
        half_precision: run in float16 autocast on CUDA (ignored on CPU).
        cpu_runtime: "float32", "bfloat16" (autocast), "onnxruntime" (ONNX Runtime, float32) or "auto" on CPU;
            ignored on CUDA (``handler/precision.py``).
        channels_last: the channels-last memory format for the weights and the batched input on CUDA (ignored
            on CPU).
    """

    def __init__(
        self,
        *,
        model: FasterRCNN,
        class_names: Sequence[str],
        device: str | torch.device = "cpu",
        half_precision: bool = False,
        cpu_runtime: str = "float32",
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
            # torchvision's transform copies the images into a fresh (contiguous) batch; the backbone gets
            # that batch in the weights' memory format.
            self.model.backbone.register_forward_pre_hook(_channels_last_input)
        self.autocast_dtype = autocast_dtype(self.device.type, half_precision=half_precision,
                                             cpu_runtime=cpu_runtime)
        # What a model call runs: the model, or on a CPU the same model exported to ONNX Runtime.
        parameters = sum(parameter.numel() for parameter in self.model.parameters())
        onnx = not on_gpu and resolve_cpu_runtime(cpu_runtime, parameters=parameters) == "onnxruntime"
        self.run_model = OnnxDetector(self.model) if onnx else self.model
        self.runtime = "onnxruntime" if onnx else str(self.autocast_dtype or torch.float32).removeprefix("torch.")
        # Uploads are copied to the GPU from page-locked memory, without waiting for the copy.
        self._pin_memory = on_gpu

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        half_precision: bool = False,
        cpu_runtime: str = "float32",
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
            cpu_runtime=cpu_runtime,
            channels_last=channels_last,
        )

    @property
    def input_size(self) -> ModelInputSize:
        """The model's own resize rule, read from its transform here alone: uploads are shrunk to it before they
        become float tensors, and thin images padded by it (``_pad_thin``)."""
        transform = self.model.transform
        return ModelInputSize(min_size=transform.min_size[-1], max_size=transform.max_size)

    def load_image(self, data: bytes | bytearray, *, max_pixels: int | None = None) -> ModelImage:
        """Decodes an upload to 8-bit pixels at most the model's input size (see ``decode_for_model``).

        Raises:
            ImageError: empty, unreadable, unsupported or over ``max_pixels``.
        """
        return decode_for_model(data, fit=self.input_size, max_pixels=max_pixels)

    def detect(
        self, images: Sequence[ModelImage | torch.Tensor], *, before_each_call: Callable[[], object] | None = None
    ) -> list[list[Detection]]:
        """Runs the model on all images (see ``_model_calls``); each image's detections, best score first.

        Args:
            images: ``ModelImage`` records, or tensors ``[3, H, W]`` (uint8, or float in [0, 1]) whose boxes
                are reported in their own pixels; each of its own size.
            before_each_call: called before each model call (the handler sets its CPU threads there).
        """
        if not images:
            return []
        images = [image if isinstance(image, ModelImage) else ModelImage.of(image) for image in images]
        batch = [self._pad_thin(self._on_device(image.pixels)) for image in images]
        outputs: list[dict[str, torch.Tensor]] = [{}] * len(batch)
        with torch.inference_mode(), reduced_precision(self.device.type, self.autocast_dtype):
            for indices in self._model_calls(batch):
                if before_each_call is not None:
                    before_each_call()
                for index, output in zip(indices, self.run_model([batch[i] for i in indices])):
                    outputs[index] = output
        return [self._detections(output, image) for output, image in zip(outputs, images)]

    def _model_calls(self, batch: Sequence[torch.Tensor]) -> list[list[int]]:
        """The images (by index) that go into one model call each.

        A GPU takes the whole batch at once. On the CPU a batch pads every image to the largest one, which
        cost 44% more time per image for mixed sizes (78 ms alone, 112 ms in batches of 4, one thread), so
        the CPU runs the images of one size together and the others alone.
        """
        if self.device.type != "cpu":
            return [list(range(len(batch)))]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(batch):
            by_shape.setdefault(tuple(image.shape), []).append(index)
        return list(by_shape.values())

    def detect_with_fallback(
        self, images: Sequence[ModelImage], *, before_each_call: Callable[[], object] | None = None
    ) -> list[list[Detection] | ModelFailure]:
        """``detect`` for a batch of strangers' images: when the model call fails for the batch, each image
        runs alone, so only an image that fails by itself gets a ``ModelFailure`` instead of its detections."""
        try:
            return list(self.detect(images, before_each_call=before_each_call))
        except Exception:
            logger.warning("the model failed on a batch of %d images; running them one by one", len(images),
                           exc_info=True)
        results: list[list[Detection] | ModelFailure] = []
        for image in images:
            try:
                results.extend(self.detect([image], before_each_call=before_each_call))
            except Exception as exc:
                logger.error("the model failed on a %dx%d image", image.width, image.height, exc_info=True)
                results.append(ModelFailure(reason=error_line(exc, with_type=True)))
        return results

    def _on_device(self, pixels: torch.Tensor) -> torch.Tensor:
        """The pixels as float in [0, 1] on the model's device; 8-bit pixels cross to a GPU before widening."""
        if self._pin_memory:
            pixels = pixels.pin_memory()
        pixels = pixels.to(self.device, non_blocking=self._pin_memory)
        return pixels.float().div_(255) if pixels.dtype == torch.uint8 else pixels

    def _pad_thin(self, image: torch.Tensor) -> torch.Tensor:
        """Pads the short side (bottom or right, so boxes keep their coordinates) of an extreme image."""
        fit = self.input_size
        height, width = image.shape[-2:]
        short, long = min(height, width), max(height, width)
        if short * fit.scale(width, height) >= MIN_RESIZED_SIDE:
            return image
        # So thin an image is scaled by its long side alone (to max_size), padded or not.
        padded_short = math.ceil(MIN_RESIZED_SIDE * long / fit.max_size)
        size = (padded_short, width) if height == short else (height, padded_short)
        # The mean colour normalises to 0, the value torchvision itself pads batches with.
        mean = torch.as_tensor(self.model.transform.image_mean, dtype=image.dtype).view(3, 1, 1)
        padded = mean.expand(3, *size).clone()
        padded[:, :height, :width] = image
        return padded

    def _detections(self, output: dict[str, torch.Tensor], image: ModelImage) -> list[Detection]:
        """The model's output for one image in the uploaded image's pixels, best score first."""
        height, width = image.pixels.shape[-2:]
        # Each axis has its own factor: the shrunk sides were rounded separately.
        to_upload = torch.tensor([image.width / width, image.height / height] * 2, dtype=torch.float32)
        limits = torch.tensor([image.width, image.height] * 2, dtype=torch.float32)
        boxes = (output["boxes"].float().cpu() * to_upload).clamp(min=torch.zeros(4), max=limits)
        scores = output["scores"].float().cpu()
        labels = output["labels"].cpu()
        # Boxes that lay in the padding have no area left after clipping (or less than the reported precision).
        precision = 10.0**-BOX_DECIMALS
        keep = (boxes[:, 2] - boxes[:, 0] > precision) & (boxes[:, 3] - boxes[:, 1] > precision)
        order = scores[keep].argsort(descending=True, stable=True)
        return [
            Detection(label=self.class_names[int(label) - 1], score=float(score), box=tuple(box.tolist()))
            for box, score, label in zip(boxes[keep][order], scores[keep][order], labels[keep][order])
        ]


def _channels_last_input(module: torch.nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])


def detections_above(
    detections: Sequence[Detection], *, threshold: float, max_detections: int | None = None
) -> list[Detection]:
    """The detections scoring at least ``threshold``, at most ``max_detections`` of them.

    Args:
        detections: best first, as ``Tagger.detect`` returns them (their order is kept).
    """
    kept = [d for d in detections if d.score >= threshold]
    return kept if max_detections is None else kept[:max_detections]


def tags_of(detections: Iterable[Detection]) -> list[str]:
    """The distinct labels of best-first detections, ordered by their best score."""
    return list(dict.fromkeys(d.label for d in detections))


def format_response(
    detections: Sequence[Detection], *, response_format: str, width: int, height: int
) -> dict[str, Any] | list[str]:
    """The response of one image, from its reported (thresholded, best-first) detections.

    Args:
        response_format: "dict" for ``{"tags", "detections": [{"label", "score", "box"}], "width", "height"}``,
            "list" for the tags alone (``["dog", "person"]``).
        width / height: the uploaded image's size.
    """
    if response_format == "dict":
        return {
            "tags": tags_of(detections),
            "detections": [d.as_dict() for d in detections],
            "width": int(width),
            "height": int(height),
        }
    if response_format == "list":
        return tags_of(detections)
    raise ValueError(f"unknown response format {response_format!r}")
