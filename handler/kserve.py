"""KServe's v1 and v2 request bodies: their adapters (the image and options out), and the answers back in.

On Kubernetes, KServe's TorchServe runtime puts its own model server in front of TorchServe: it takes
``POST /v1/models/tagger:predict`` and ``POST /v2/models/tagger/infer`` and forwards the JSON body to the same
URL of TorchServe's front end (``application/json``; a v2 body re-serialised by KServe). The handler reads
both bodies here, one request at a time, so batching and per-request errors work as for every other upload:

- v1 ``{"instances": [{"data": "<base64>", "format": "list", "threshold": 0.3}]}`` (an instance may also be
  the base64 string alone) is answered ``{"predictions": [<the dict or list response>]}``;
- v2 ``{"id": "1", "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["<base64>"]}],
  "parameters": {"format": "list"}}`` is answered with one BYTES output holding the response as JSON text.

One image per request, as for the other uploads (TorchServe batches concurrent requests). TorchServe's own
``service_envelope`` (kserve, kservev2) is not used: it reads only the first request of a batch and answers
the batch once, so the KServe bundle keeps KServe's ``TS_SERVICE_ENVELOPE`` out (scripts/kserve_bundle.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Mapping

from .options import OPTION_FIELDS
from .uploads import RequestError, UnwrappedRequest, image_from_base64, read_json_object

V1_INSTANCES = "instances"
V2_INPUTS = "inputs"
V2_OUTPUT_NAME = "result"


@dataclass(frozen=True)
class KServeEnvelope:
    """How a KServe request wants its answer wrapped.

    Args:
        protocol: "v1" or "v2".
        request_id: the v2 request's own ``id``, answered back; None when it sent none (or for v1).
    """

    protocol: str
    request_id: str | None = None

    def wrap(self, response: dict | list, *, model_name: str, model_version: str, torchserve_id: str) -> dict:
        """The body answering a tagged image: v1 ``predictions`` or a v2 inference response.

        Args:
            response: the tagger's dict or list response of the one image.
            model_name / model_version: the archive's (v2 answers name them).
            torchserve_id: TorchServe's request id, the v2 ``id`` of a request that sent none.
        """
        if self.protocol == "v1":
            return {"predictions": [response]}
        return {
            "id": self.request_id or torchserve_id,
            "model_name": model_name,
            "model_version": model_version,
            "outputs": [{"name": V2_OUTPUT_NAME, "shape": [1], "datatype": "BYTES", "data": [json.dumps(response)]}],
        }


def read_v1(body: Mapping[str, Any]) -> UnwrappedRequest:
    """The v1 adapter: the one instance's image and options, in a v1 envelope.

    Raises:
        RequestError: 400 for no instance, several, or one that holds no base64 image.
    """
    instance = _v1_instance(body[V1_INSTANCES])
    found = (UnwrappedRequest(image=image_from_base64(instance)) if isinstance(instance, str)
             else read_json_object(instance))
    return replace(found, envelope=KServeEnvelope(protocol="v1"))


def read_v2(body: Mapping[str, Any]) -> UnwrappedRequest:
    """The v2 adapter: the one BYTES element's image; options from the request's parameters, overridden by the
    input tensor's own; the request's ``id`` kept for the answer.

    Raises:
        RequestError: 400 for no input tensor, several, one not of one base64 BYTES element, or broken base64.
    """
    inputs = body[V2_INPUTS]
    encoded = _v2_image(inputs)
    request_id = body.get("id")
    return UnwrappedRequest(
        image=image_from_base64(encoded),
        options={**_v2_parameters(body), **_v2_parameters(inputs[0])},
        envelope=KServeEnvelope(protocol="v2", request_id=request_id if isinstance(request_id, str) else None),
    )


def _v1_instance(instances: Any) -> str | Mapping[str, Any]:
    if not isinstance(instances, list) or not instances:
        raise RequestError(400, "no_image", 'a KServe v1 request needs "instances": [{"data": "<base64 image>"}]')
    if len(instances) > 1:
        raise RequestError(
            400, "too_many_images",
            f"send one instance per request, got {len(instances)} (TorchServe batches concurrent requests)",
        )
    (instance,) = instances
    if not isinstance(instance, (str, Mapping)):
        raise RequestError(400, "no_image", 'a KServe v1 instance is {"data": "<base64 image>"} or the base64 string')
    return instance


def _v2_image(inputs: Any) -> str:
    """The base64 text of the one element of the one BYTES input tensor."""
    usage = ('a KServe v2 request needs "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", '
             '"data": ["<base64 image>"]}]')
    if not isinstance(inputs, list) or not inputs or not isinstance(inputs[0], Mapping):
        raise RequestError(400, "no_image", usage)
    if len(inputs) > 1:
        raise RequestError(400, "too_many_images", f"send one input tensor per request, got {len(inputs)}")
    tensor = inputs[0]
    if tensor.get("datatype") != "BYTES":
        raise RequestError(400, "no_image",
                           f"the input tensor's datatype must be BYTES, got {tensor.get('datatype')!r}: {usage}")
    data = tensor.get("data")
    if not isinstance(data, list) or not data:
        raise RequestError(400, "no_image", usage)
    if len(data) > 1:
        raise RequestError(
            400, "too_many_images",
            f"send one image per request, got {len(data)} (TorchServe batches concurrent requests)",
        )
    if not isinstance(data[0], str):
        raise RequestError(400, "bad_base64", "the BYTES tensor's element must be the image as a base64 string")
    return data[0]


def _v2_parameters(holder: Mapping[str, Any]) -> dict[str, Any]:
    parameters = holder.get("parameters")
    if not isinstance(parameters, Mapping):
        return {}
    return {key: parameters[key] for key in OPTION_FIELDS if key in parameters}
