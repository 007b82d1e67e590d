"""Reads one TorchServe request row: its envelope opened by that envelope's adapter, its options checked once.

``read_request`` takes four steps:

1. a request for TorchServe's explain or describe path is refused (this model has none);
2. each part whose Content-Type says JSON is parsed (``uploads.read_json_parts``, the one place JSON is read);
3. the adapter of the row's envelope takes out the image bytes, the options as sent and the envelope the
   answer goes back in: a KServe v1 or v2 body (``handler/kserve.py``), else TorchServe's own parts
   (``handler/uploads.py``: the plain body, multipart parts, a JSON object);
4. the options are checked (``handler/options.py``): the body's own fields first, then the headers
   (``X-Tag-Format``, ``X-Score-Threshold``), then the defaults.

Nothing here knows torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .kserve import V1_INSTANCES, V2_INPUTS, read_v1, read_v2
from .options import FORMAT_FIELD, THRESHOLD_FIELD, OptionError, TagOptions, parse_format, parse_threshold
from .uploads import RAW_BODY, AnswerEnvelope, RequestError, UnwrappedRequest, read_json_parts, read_parts

# The request's vocabulary in one place for the API's document (tests/test_openapi.py): the headers below, and
# the fields and values whose homes are the modules that read them.
from .options import OPTION_FIELDS, RESPONSE_FORMATS  # noqa: F401
from .uploads import JSON_IMAGE_FIELD  # noqa: F401

FORMAT_HEADER = "X-Tag-Format"
THRESHOLD_HEADER = "X-Score-Threshold"
# TorchServe sends a request to its explain or describe path with one of these headers set to "True"
# (POST /explanations/<model> sets "explain"); this model has no such path.
OTHER_PATH_HEADERS = ("explain", "describe")


@dataclass(frozen=True)
class TagRequest:
    """A request read: its encoded image, its checked options, and the envelope its answer goes back in (None:
    the answer as it is)."""

    image: bytes | bytearray
    options: TagOptions
    envelope: AnswerEnvelope | None


def read_request(row: Any, headers: Mapping[str, Any], *, defaults: TagOptions) -> TagRequest:
    """Finds the one image of a request, its options and its envelope.

    Args:
        row: one element of the list TorchServe passes to the handler.
        headers: that request's headers (``context.get_all_request_header(idx)``); TorchServe puts each
            body part's own Content-Type there too, as ``{part_name: {"content-type": ...}}``.
        defaults: the options of a request that names none.

    Raises:
        RequestError: 400 an explain or describe request, broken JSON, no image, two images, a JSON body that
            is not an object, broken base64; 422 a bad format or threshold.
    """
    refuse_other_paths(headers)
    request = unwrap(read_json_parts(row, headers), headers)
    return TagRequest(image=request.image, options=tag_options(request.options, headers, defaults=defaults),
                      envelope=request.envelope)


def refuse_other_paths(headers: Mapping[str, Any]) -> None:
    """Refuses a request TorchServe sends for its explain or describe path.

    Raises:
        RequestError: 400 ``predictions_only``.
    """
    for header in OTHER_PATH_HEADERS:
        if (header_value(headers, header) or "").strip().lower() == "true":
            raise RequestError(
                400, "predictions_only",
                f"this model offers predictions only (the request asks to {header}): "
                f"POST the image to /predictions/<model> without an {header!r} header",
            )


def unwrap(row: Any, headers: Mapping[str, Any]) -> UnwrappedRequest:
    """The request out of its envelope, by that envelope's adapter.

    Args:
        row: one element of the list TorchServe passes to the handler, its JSON parts read.
        headers: that request's headers.
    """
    body = row.get(RAW_BODY) if isinstance(row, Mapping) else None
    if isinstance(body, Mapping) and V1_INSTANCES in body:
        return read_v1(body)
    if isinstance(body, Mapping) and V2_INPUTS in body:
        return read_v2(body)
    return read_parts(row, headers)


def tag_options(sent: Mapping[str, Any], headers: Mapping[str, Any], *, defaults: TagOptions) -> TagOptions:
    """The options of a request: each from its own field when the body sends it, else from its header, else the
    default; checked here.

    Args:
        sent: the option values the body sends, by field name (``UnwrappedRequest.options``).
        headers: that request's headers.
        defaults: the options of a request that names none.

    Raises:
        RequestError: 422 for a format or threshold it cannot take.
    """
    response_format = sent.get(FORMAT_FIELD, header_value(headers, FORMAT_HEADER))
    threshold = sent.get(THRESHOLD_FIELD, header_value(headers, THRESHOLD_HEADER))
    try:
        return TagOptions(
            response_format=defaults.response_format if response_format is None else parse_format(response_format),
            threshold=defaults.threshold if threshold is None else parse_threshold(threshold),
        )
    except OptionError as error:
        raise RequestError(422, "bad_parameter", str(error)) from None


def header_value(headers: Mapping[str, Any], name: str) -> str | None:
    """The value of request header ``name``, matched case-insensitively, or None."""
    wanted = name.lower()
    for key, value in headers.items():
        if isinstance(value, str) and str(key).lower() == wanted:
            return value
    return None
