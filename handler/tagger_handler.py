"""TorchServe entry point (``--handler``): a thin adapter between TorchServe's rows and the tagging core.

TorchServe refuses a handler file that defines more than one class, so every other class lives in the
``handler`` package. Imports are absolute (``handler.…``): inside the model archive this file sits at the top
level next to the ``handler/`` folder, and in the repository it is ``handler/tagger_handler.py``.

Each request of a batch is answered on its own, whatever it holds: a bad one gets its 4xx status and a JSON
error body through ``context.set_response_status``; the others are tagged in one model call. When that call
fails, the images run one by one and only an image that fails alone gets a 500. The worker never raises out
of ``handle`` (TorchServe would answer the whole batch 503).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler

from handler.core_sharing import CoreSharing, record_folder
from handler.decode import ImageError
from handler.neighbours import NeighbourLoad
from handler.options import TagOptions
from handler.request_parsing import read_request
from handler.rows import Prepared, Refusal, Tagged
from handler.settings import settings_from_config
from handler.sizing import configured_workers, cpu_cores, worker_layout
from handler.tagging import Detection, ModelFailure, Tagger, detections_above, format_response
from handler.text import error_line, shorten
from handler.uploads import RequestError

logger = logging.getLogger(__name__)
MESSAGE_LIMIT = 200  # characters of an unforeseen exception's message quoted in an answer


class TaggerHandler(BaseHandler):
    """initialize -> preprocess (rows to images) -> inference (one model call) -> postprocess (rows, statuses)."""

    def initialize(self, context: Any) -> None:
        """Rebuilds the model from the archive's checkpoint and reads the ``handler:`` settings."""
        self.context = context
        self.manifest = context.manifest
        self.settings = settings_from_config((context.model_yaml_config or {}).get("handler"))
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu_id}" if torch.cuda.is_available() and gpu_id is not None else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # kernels and pinned memory of this worker on its own GPU
        # The workers share the cores: handler/sizing.py gives each its share (explicit settings win), and
        # on a CPU each batch takes the cores the idle workers leave (handler/core_sharing.py).
        layout = worker_layout(
            cores=cpu_cores(), gpus=torch.cuda.device_count() if self.device.type == "cuda" else 0,
            workers=configured_workers(context.model_yaml_config), torch_threads=self.settings.torch_threads,
        )
        torch.set_num_threads(layout.torch_threads)
        # TorchServe's front end starts the workers: it names the record they share, in which each batch
        # counts the workers alive and busy (the layout's worker count is only the guess until then).
        self.core_sharing = (CoreSharing(folder=record_folder(os.getppid()), cores=layout.cores,
                                         workers=layout.workers, neighbours=NeighbourLoad(cores=layout.cores))
                             if layout.follows_load else None)
        self.batch_size = properties.get("batch_size") or 1
        self.model_pt_path = str(Path(properties["model_dir"]) / self.manifest["model"]["serializedFile"])
        self.tagger = Tagger.from_checkpoint(
            self.model_pt_path,
            device=self.device,
            half_precision=self.settings.half_precision,
            cpu_runtime=self.settings.cpu_runtime,
            channels_last=self.settings.channels_last,
        )
        self.model = self.tagger.model
        logger.info("the model runs in %s on %s (%s)", self.tagger.runtime, self.device, layout.describe())
        self.initialized = True

    def handle(self, data: list[Any], context: Any) -> list[dict | list]:
        """Every request takes the prediction path. ``BaseHandler.handle`` would send the whole batch down its
        explain or describe path when the batch's first request asks for it; here such requests are refused
        one by one in ``preprocess`` (400 ``predictions_only``)."""
        started = time.perf_counter()
        self.context = context
        # A full batch of several means requests are queuing for every worker (core_sharing.CoreSharing.busy);
        # with batchSize 1 every batch is "full", so it tells nothing and the record alone decides.
        backlog = 1 < self.batch_size <= len(data)
        with self.core_sharing.busy(backlog=backlog) if self.core_sharing else contextlib.nullcontext():
            responses = self.postprocess(self.inference(self.preprocess(data)))
        self._add_time("HandlerTime", started)
        return responses

    def preprocess(self, data: list[Any]) -> list[Prepared | Refusal]:
        started = time.perf_counter()
        defaults = TagOptions(response_format=self.settings.default_format, threshold=self.settings.score_threshold)
        prepared: list[Prepared | Refusal] = []
        for idx, row in enumerate(data):
            try:
                # A KServe v1/v2 request's envelope waits beside its options to wrap the answer, as TorchServe's
                # own request envelopes wrap ``handle``.
                request = read_request(row, self.context.get_all_request_header(idx), defaults=defaults)
                image = self.tagger.load_image(request.image, max_pixels=self.settings.max_pixels)
                prepared.append(Prepared(options=request.options, envelope=request.envelope, image=image))
            except (RequestError, ImageError) as refusal:
                prepared.append(Refusal.of(refusal))
            except Exception as exc:  # anything unforeseen in one stranger's request is that request's problem
                logger.warning("request %d of the batch could not be read", idx, exc_info=True)
                prepared.append(Refusal(status=400, error="bad_request",
                                        message=f"the request could not be read ({_quote(exc)})"))
        self._add_time("TaggerPreprocessTime", started)
        return prepared

    def inference(self, data: list[Prepared | Refusal], *args: Any, **kwargs: Any) -> list[Tagged | Refusal]:
        started = time.perf_counter()
        accepted = [item for item in data if isinstance(item, Prepared)]
        before_each_call = self.core_sharing.share_now if self.core_sharing else None
        found = iter(self.tagger.detect_with_fallback([item.image for item in accepted],
                                                      before_each_call=before_each_call))
        results: list[Tagged | Refusal] = []
        for item in data:
            outcome = next(found) if isinstance(item, Prepared) else item  # detections, a failure, or a Refusal
            if isinstance(outcome, list):
                outcome = Tagged(options=item.options, envelope=item.envelope, width=item.image.width,
                                 height=item.image.height, detections=outcome)
            elif isinstance(outcome, ModelFailure):  # the model failed on this image alone
                reason = shorten(outcome.reason, MESSAGE_LIMIT)
                outcome = Refusal(status=500, error="inference_failed",
                                  message=f"the model failed on this image ({reason})")
            results.append(outcome)
        self._add_time("TaggerInferenceTime", started)
        self.context.metrics.add_counter("TaggerImages", len(accepted))
        return results

    def postprocess(self, data: list[Tagged | Refusal]) -> list[dict | list]:
        started = time.perf_counter()
        responses: list[dict | list] = []
        reported = 0
        for idx, item in enumerate(data):
            self.context.set_response_content_type(idx, "application/json")
            if isinstance(item, Tagged):
                try:
                    kept = detections_above(item.detections, threshold=item.options.threshold,
                                            max_detections=self.settings.max_detections)
                    responses.append(self._respond(idx, item, kept))
                    reported += len(kept)
                    continue
                except Exception as exc:  # a fault in answering one request must not fail its batch
                    logger.error("the answer to request %d of the batch could not be written", idx, exc_info=True)
                    item = Refusal(status=500, error="response_failed",
                                   message=f"the answer could not be written ({_quote(exc)})")
            self.context.set_response_status(item.status, _reason_phrase(item.message), idx)
            responses.append(item.body())
        self._add_time("TaggerPostprocessTime", started)
        self.context.metrics.add_counter("TaggerDetections", reported)
        return responses

    def _respond(self, idx: int, item: Tagged, kept: list[Detection]) -> dict | list:
        """The response to one tagged request: the asked format, in its KServe envelope if it came in one."""
        response = format_response(kept, response_format=item.options.response_format, width=item.width,
                                   height=item.height)
        if item.envelope is not None:
            model = self.manifest["model"]
            response = item.envelope.wrap(response, model_name=model["modelName"],
                                          model_version=model["modelVersion"],
                                          torchserve_id=self.context.get_request_id(idx))
        return response

    def _add_time(self, name: str, started: float) -> None:
        self.context.metrics.add_time(name, round((time.perf_counter() - started) * 1000, 2), None, "ms")


def _quote(exc: BaseException) -> str:
    """An unforeseen exception as quoted in an answer: ``Type: message``, one line, ``MESSAGE_LIMIT`` long."""
    return shorten(error_line(exc, with_type=True), MESSAGE_LIMIT)


def _reason_phrase(message: str, limit: int = 200) -> str:
    """The message as an HTTP reason phrase: one line of printable ASCII (the Java front end sends it as is)."""
    return shorten(" ".join(message.split()).encode("ascii", "replace").decode("ascii"), limit)
