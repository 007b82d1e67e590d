"""TorchServe entry point (``--handler``): a thin adapter between TorchServe's rows and the tagging core.

TorchServe refuses a handler file that defines more than one class, so every other class lives in the
``handler`` package. Imports are absolute (``handler.…``): inside the model archive this file sits at the top
level next to the ``handler/`` folder, and in the repository it is ``handler/tagger_handler.py``.

Each request of a batch is answered on its own: a bad one gets its 4xx status and a JSON error body through
``context.set_response_status``; the others are tagged in one model call.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler

from handler.decode import ImageError, decode_image, image_to_tensor
from handler.request_parsing import RequestError, TagOptions, parse_request
from handler.settings import settings_from_config
from handler.tagging import Detection, Tagger, detections_above, error_response, format_response

# A row refused in preprocess travels through inference and postprocess as its exception.
Refusal = RequestError | ImageError
Prepared = tuple[TagOptions, torch.Tensor]  # the options and the image as a [3, H, W] tensor
Tagged = tuple[TagOptions, torch.Size, list[Detection]]  # the options, the image's shape, its detections


class TaggerHandler(BaseHandler):
    """initialize -> preprocess (rows to tensors) -> inference (one model call) -> postprocess (rows, statuses)."""

    def initialize(self, context: Any) -> None:
        """Rebuilds the model from the archive's checkpoint and reads the ``handler:`` settings."""
        self.context = context
        self.manifest = context.manifest
        self.settings = settings_from_config((context.model_yaml_config or {}).get("handler"))
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu_id}" if torch.cuda.is_available() and gpu_id is not None else "cpu")
        if self.device.type == "cpu" and self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        self.model_pt_path = str(Path(properties["model_dir"]) / self.manifest["model"]["serializedFile"])
        self.tagger = Tagger.from_checkpoint(
            self.model_pt_path,
            device=self.device,
            half_precision=self.settings.half_precision,
            channels_last=self.settings.channels_last,
        )
        self.model = self.tagger.model
        self.initialized = True

    def preprocess(self, data: list[Any]) -> list[Prepared | Refusal]:
        started = time.perf_counter()
        defaults = TagOptions(response_format=self.settings.default_format, threshold=self.settings.score_threshold)
        prepared: list[Prepared | Refusal] = []
        for idx, row in enumerate(data):
            try:
                request = parse_request(row, self.context.get_all_request_header(idx), defaults=defaults)
                image = decode_image(request.image, max_pixels=self.settings.max_pixels)
                prepared.append((request.options, image_to_tensor(image)))
            except (RequestError, ImageError) as refusal:
                prepared.append(refusal)
        self._add_time("TaggerPreprocessTime", started)
        return prepared

    def inference(self, data: list[Prepared | Refusal], *args: Any, **kwargs: Any) -> list[Tagged | Refusal]:
        started = time.perf_counter()
        accepted = [item for item in data if not isinstance(item, Refusal)]
        detections = iter(self.tagger.detect([tensor for _, tensor in accepted]))
        results: list[Tagged | Refusal] = [
            item if isinstance(item, Refusal) else (item[0], item[1].shape, next(detections)) for item in data
        ]
        self._add_time("TaggerInferenceTime", started)
        self.context.metrics.add_counter("TaggerImages", len(accepted))
        return results

    def postprocess(self, data: list[Tagged | Refusal]) -> list[dict | list]:
        started = time.perf_counter()
        responses: list[dict | list] = []
        reported = 0
        for idx, item in enumerate(data):
            self.context.set_response_content_type(idx, "application/json")
            if isinstance(item, Refusal):
                self.context.set_response_status(item.status, _reason_phrase(str(item)), idx)
                responses.append(error_response(item))
                continue
            options, (_, height, width), detections = item
            kept = detections_above(
                detections, threshold=options.threshold, max_detections=self.settings.max_detections
            )
            reported += len(kept)
            responses.append(
                format_response(kept, response_format=options.response_format, width=width, height=height,
                                threshold=options.threshold)
            )
        self._add_time("TaggerPostprocessTime", started)
        self.context.metrics.add_counter("TaggerDetections", reported)
        return responses

    def _add_time(self, name: str, started: float) -> None:
        self.context.metrics.add_time(name, round((time.perf_counter() - started) * 1000, 2), None, "ms")


def _reason_phrase(message: str, limit: int = 200) -> str:
    """The message as an HTTP reason phrase: one line of printable ASCII (the Java front end sends it as is)."""
    phrase = " ".join(message.split()).encode("ascii", "replace").decode("ascii")
    return phrase if len(phrase) <= limit else phrase[: limit - 3] + "..."
