"""Turns one TorchServe request row and its headers into the image bytes and the tagging options.

TorchServe hands a handler one dict per request: a raw body is
``row["body"]`` (``bytearray`` for image/octet-stream bodies, a parsed value for JSON, ``str`` for text), every
multipart field is a key of its own, and a body sent without a Content-Type may arrive as an empty row. Headers
come with the client's capitalisation, so they are looked up case-insensitively. Nothing here knows torch.

A multipart field without a filename (``-F note=holiday``) arrives as bytes without a Content-Type, like a
file would: such a part holding a little text is an ordinary form field and is ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from .text import shorten

RESPONSE_FORMATS = ("dict", "list")
FORMAT_FIELD = "format"
THRESHOLD_FIELD = "threshold"
# The fields of a form or a JSON body (and of a KServe request's parameters) that are options, not the image.
OPTION_FIELDS = (FORMAT_FIELD, THRESHOLD_FIELD)
JSON_IMAGE_FIELD = "data"
RAW_BODY = "body"
FORMAT_HEADER = "X-Tag-Format"
THRESHOLD_HEADER = "X-Score-Threshold"
# TorchServe sends a request to its explain or describe path with one of these headers set to "True"
# (POST /explanations/<model> sets "explain"); this model has no such path.
OTHER_PATH_HEADERS = ("explain", "describe")
# A multipart part without a Content-Type holding at most this much UTF-8 text is a form field, not a file.
FORM_FIELD_MAX_BYTES = 64 * 1024

UPLOAD_STYLES = (
    "send the image as a multipart file (curl -F data=@photo.jpg), as the raw body (curl -T photo.jpg, "
    "or curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg'), or as JSON {\"data\": \"<base64>\"} "
    "with -H 'Content-Type: application/json'"
)


class RequestError(ValueError):
    """A request the tagger cannot answer; ``status`` is its HTTP status, ``error`` a short code."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


@dataclass(frozen=True)
class TagOptions:
    """How one request wants its answer: ``response_format`` is "dict" or "list"."""

    response_format: str
    threshold: float


@dataclass(frozen=True)
class TagRequest:
    image: bytes | bytearray
    options: TagOptions


def read_json_parts(row: Any, headers: Mapping[str, Any]) -> Any:
    """The row with each part whose Content-Type says JSON parsed: the one place a request's JSON is read.

    TorchServe parses a part sent as exactly ``application/json``; with a parameter (``; charset=utf-8``) the
    part arrives as bytes, and is parsed here. Other rows come back as they are.

    Args:
        row: one element of the list TorchServe passes to the handler.
        headers: that request's headers, with each part's own Content-Type (see ``parse_request``).

    Raises:
        RequestError: 400 for a part that says it is JSON but is not.
    """
    if not isinstance(row, Mapping):
        return row
    return {
        name: _json_part(name, value)
        if isinstance(value, (bytes, bytearray)) and _part_content_type(headers, name).startswith("application/json")
        else value
        for name, value in row.items()
    }


def parse_request(row: Any, headers: Mapping[str, Any], *, defaults: TagOptions) -> TagRequest:
    """Finds the one image of a request and its options (body fields first, then headers, then defaults).

    Args:
        row: one element of the list TorchServe passes to the handler, its JSON parts read
            (``read_json_parts``) and a KServe body opened (``kserve.open_envelope``).
        headers: that request's headers (``context.get_all_request_header(idx)``); TorchServe puts each
            body part's own Content-Type there too, as ``{part_name: {"content-type": ...}}``.
        defaults: the options of a request that names none.

    Raises:
        RequestError: 400 no image, two images, a JSON body that is not an object, broken base64, an explain
            or describe request; 422 a bad format or threshold.
    """
    for header in OTHER_PATH_HEADERS:
        if (header_value(headers, header) or "").strip().lower() == "true":
            raise RequestError(
                400, "predictions_only",
                f"this model offers predictions only (the request asks to {header}): "
                f"POST the image to /predictions/<model> without an {header!r} header",
            )
    if not isinstance(row, Mapping):
        raise RequestError(400, "no_image", f"the request holds no image: {UPLOAD_STYLES}")
    images: dict[str, bytes | bytearray] = {}
    fields: dict[str, Any] = {}
    text_parts: list[str] = []
    for name, value in row.items():
        if str(name).lower() in OPTION_FIELDS:
            fields[str(name).lower()] = value
        elif isinstance(value, Mapping):
            fields.update({k: value[k] for k in OPTION_FIELDS if k in value})
            images[name] = _image_from_json(value)
        elif isinstance(value, (bytes, bytearray)) and name != RAW_BODY and _is_form_field(headers, name, value):
            text_parts.append(name)
        elif isinstance(value, (bytes, bytearray)):
            images[name] = value
        elif isinstance(value, str):
            text_parts.append(name)
        else:
            raise RequestError(
                400, "bad_json", f'a JSON body must be an object such as {{"data": "<base64>"}}, not {_show(value)}'
            )
    if not images:
        received = f" (the text part(s) {', '.join(map(repr, text_parts))} are not images)" if text_parts else ""
        raise RequestError(400, "no_image", f"the request holds no image{received}: {UPLOAD_STYLES}")
    if len(images) > 1:
        raise RequestError(
            400, "too_many_images", f"send one image per request, got the parts {', '.join(map(repr, images))}"
        )
    response_format = fields.get(FORMAT_FIELD, header_value(headers, FORMAT_HEADER))
    threshold = fields.get(THRESHOLD_FIELD, header_value(headers, THRESHOLD_HEADER))
    options = TagOptions(
        response_format=defaults.response_format if response_format is None else parse_format(response_format),
        threshold=defaults.threshold if threshold is None else parse_threshold(threshold),
    )
    return TagRequest(image=next(iter(images.values())), options=options)


def parse_format(value: Any) -> str:
    """A response format name ("dict" or "list", any case, text or bytes).

    Raises:
        RequestError: 422 for anything else.
    """
    text = _text(value, FORMAT_FIELD).strip().lower()
    if text not in RESPONSE_FORMATS:
        raise RequestError(
            422, "bad_parameter", f"format must be one of {', '.join(RESPONSE_FORMATS)}, got {_show(value)}"
        )
    return text


def parse_threshold(value: Any) -> float:
    """A score threshold: a number (or its text) between 0 and 1.

    Raises:
        RequestError: 422 for anything else.
    """
    problem = RequestError(422, "bad_parameter", f"threshold must be a number from 0 to 1, got {_show(value)}")
    if isinstance(value, bool):
        raise problem
    try:
        threshold = float(value) if isinstance(value, (int, float)) else float(_text(value, THRESHOLD_FIELD))
    except (ValueError, OverflowError):  # OverflowError: an integer too large for a float (400 digits)
        raise problem from None
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise problem
    return threshold


def header_value(headers: Mapping[str, Any], name: str) -> str | None:
    """The value of request header ``name``, matched case-insensitively, or None."""
    wanted = name.lower()
    for key, value in headers.items():
        if isinstance(value, str) and str(key).lower() == wanted:
            return value
    return None


def _image_from_json(body: Mapping[str, Any]) -> bytes:
    encoded = body.get(JSON_IMAGE_FIELD)
    if not isinstance(encoded, str):
        raise RequestError(
            400, "no_image", f'a JSON body needs a "{JSON_IMAGE_FIELD}" field holding the base64 image: {UPLOAD_STYLES}'
        )
    if encoded.startswith("data:") and "," in encoded:  # a data URL: data:image/jpeg;base64,...
        encoded = encoded.split(",", 1)[1]
    try:
        return base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(
            400, "bad_base64", f'the JSON "{JSON_IMAGE_FIELD}" field is not valid base64'
        ) from None


def _json_part(name: str, value: bytes | bytearray) -> Any:
    """TorchServe parses only ``application/json`` exactly; a charset parameter or broken JSON leaves bytes."""
    try:
        return json.loads(bytes(value).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested too deeply ("[" * 200000)
        raise RequestError(400, "bad_json", f"the {name!r} part says it is JSON but is not valid JSON") from None


def _is_form_field(headers: Mapping[str, Any], part_name: str, value: bytes | bytearray) -> bool:
    """A multipart part without a Content-Type of its own that holds a little printable UTF-8 text."""
    if _part_content_type(headers, part_name) or len(value) > FORM_FIELD_MAX_BYTES:
        return False
    try:
        text = bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n" for c in text)


def _part_content_type(headers: Mapping[str, Any], part_name: str) -> str:
    part = headers.get(part_name)
    content_type = part.get("content-type") if isinstance(part, Mapping) else None
    return content_type.lower() if isinstance(content_type, str) else ""


def _text(value: Any, field: str) -> str:
    """A multipart field without a filename arrives as bytes: read it as UTF-8 text."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(422, "bad_parameter", f"{field} must be UTF-8 text") from None
    raise RequestError(422, "bad_parameter", f"{field} must be text, got {_show(value)}")


def _show(value: Any, limit: int = 40) -> str:
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    return shorten(repr(value), limit)
