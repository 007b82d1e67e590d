"""TorchServe's own request shapes read by their adapters (a plain body, multipart parts, a JSON object), and
what every adapter, KServe's included (``handler/kserve.py``), returns: an ``UnwrappedRequest``.

TorchServe hands a handler one dict per request, its *row*: a raw body is ``row["body"]`` (``bytearray`` for
image/octet-stream bodies, a parsed value for JSON, ``str`` for text), every multipart field and every URL
query parameter is a key of its own, and a body sent without a Content-Type may arrive as an empty row.
Headers come with the client's capitalisation, so they are looked up case-insensitively; TorchServe puts each
part's own Content-Type there too, as ``{part_name: {"content-type": ...}}``. Nothing here knows torch.

The shapes mix in one row (a query parameter beside a raw body, a JSON part among multipart files), so the
row is read part by part (``read_parts``), each part by the adapter of its shape:

- the plain body: the image bytes as sent;
- a multipart part: an image file, or a form field: a part without a Content-Type of its own holding a
  little text (``-F note=holiday`` arrives as bytes, like a file would), ignored unless it names an option;
- a JSON object, the body or a part (``read_json_object``): ``{"data": "<base64>", "format", "threshold"}``.

A part named after an option (``format``, ``threshold``) is that option, whatever its shape. The options come
back as sent; ``request_parsing.read_request`` checks them once, whatever envelope they came in.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

from .options import OPTION_FIELDS
from .text import short_repr

RAW_BODY = "body"
JSON_IMAGE_FIELD = "data"
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


class AnswerEnvelope(Protocol):
    """The envelope an answer goes back in, as its request came in one (``kserve.KServeEnvelope``)."""

    def wrap(self, response: dict | list, *, model_name: str, model_version: str, torchserve_id: str) -> dict:
        """The body answering the request, around the tagger's ``response``."""


@dataclass(frozen=True)
class UnwrappedRequest:
    """A request taken out of its envelope.

    Args:
        image: the encoded image, as uploaded.
        options: the option values as sent (by field name), not yet checked.
        envelope: the envelope the answer goes back in; None: the answer as it is.
    """

    image: bytes | bytearray
    options: Mapping[str, Any] = field(default_factory=dict)
    envelope: AnswerEnvelope | None = None


def read_json_parts(row: Any, headers: Mapping[str, Any]) -> Any:
    """The row with each part whose Content-Type says JSON parsed: the one place a request's JSON is read.

    TorchServe parses a part sent as exactly ``application/json``; with a parameter (``; charset=utf-8``) the
    part arrives as bytes, and is parsed here. Other rows come back as they are.

    Args:
        row: one element of the list TorchServe passes to the handler.
        headers: that request's headers, with each part's own Content-Type.

    Raises:
        RequestError: 400 for a part that says it is JSON but is not.
    """
    if not isinstance(row, Mapping):
        return row
    return {
        name: _json_part(name, value)
        if isinstance(value, (bytes, bytearray)) and part_content_type(headers, name).startswith("application/json")
        else value
        for name, value in row.items()
    }


def read_parts(row: Any, headers: Mapping[str, Any]) -> UnwrappedRequest:
    """The one image of a row of TorchServe's own parts, and the options they send (a later part's win).

    Args:
        row: one element of the list TorchServe passes to the handler, its JSON parts read (``read_json_parts``).
        headers: that request's headers, with each part's own Content-Type.

    Raises:
        RequestError: 400 no image, two images, a JSON value that is not an object, broken base64.
    """
    if not isinstance(row, Mapping):
        raise RequestError(400, "no_image", f"the request holds no image: {UPLOAD_STYLES}")
    images: dict[str, bytes | bytearray] = {}
    options: dict[str, Any] = {}
    text_parts: list[str] = []
    for name, value in row.items():
        if str(name).lower() in OPTION_FIELDS:
            options[str(name).lower()] = value
        elif isinstance(value, Mapping):
            found = read_json_object(value)
            options.update(found.options)
            images[name] = found.image
        elif isinstance(value, (bytes, bytearray)):
            if name != RAW_BODY and _is_form_field(headers, name, value):
                text_parts.append(name)
            else:
                images[name] = value  # the plain body, or a multipart file
        elif isinstance(value, str):  # a text/* part
            text_parts.append(name)
        else:
            raise RequestError(400, "bad_json",
                               f'a JSON body must be an object such as {{"data": "<base64>"}}, not {short_repr(value)}')
    if not images:
        received = f" (the text part(s) {', '.join(map(repr, text_parts))} are not images)" if text_parts else ""
        raise RequestError(400, "no_image", f"the request holds no image{received}: {UPLOAD_STYLES}")
    if len(images) > 1:
        raise RequestError(
            400, "too_many_images", f"send one image per request, got the parts {', '.join(map(repr, images))}"
        )
    return UnwrappedRequest(image=next(iter(images.values())), options=options)


def read_json_object(body: Mapping[str, Any]) -> UnwrappedRequest:
    """The JSON adapter: ``{"data": "<base64>", "format": ..., "threshold": ...}`` (a JSON body or part, or a
    KServe v1 instance).

    Raises:
        RequestError: 400 no base64 string in ``data``, or broken base64.
    """
    encoded = body.get(JSON_IMAGE_FIELD)
    if not isinstance(encoded, str):
        raise RequestError(
            400, "no_image", f'a JSON body needs a "{JSON_IMAGE_FIELD}" field holding the base64 image: {UPLOAD_STYLES}'
        )
    return UnwrappedRequest(image=image_from_base64(encoded),
                            options={key: body[key] for key in OPTION_FIELDS if key in body})


def image_from_base64(encoded: str) -> bytes:
    """The image bytes of a base64 string, a data URL (``data:image/jpeg;base64,...``) or base64 wrapped in lines.

    Raises:
        RequestError: 400 for text that is not base64.
    """
    if encoded.startswith("data:") and "," in encoded:
        encoded = encoded.split(",", 1)[1]
    try:
        return base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(
            400, "bad_base64", f'the JSON "{JSON_IMAGE_FIELD}" field is not valid base64'
        ) from None


def part_content_type(headers: Mapping[str, Any], part_name: str) -> str:
    """The Content-Type TorchServe gives a part in the headers, lower case; "" when it has none."""
    part = headers.get(part_name)
    content_type = part.get("content-type") if isinstance(part, Mapping) else None
    return content_type.lower() if isinstance(content_type, str) else ""


def _json_part(name: str, value: bytes | bytearray) -> Any:
    """TorchServe parses only ``application/json`` exactly; a charset parameter or broken JSON leaves bytes."""
    try:
        return json.loads(bytes(value).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested too deeply ("[" * 200000)
        raise RequestError(400, "bad_json", f"the {name!r} part says it is JSON but is not valid JSON") from None


def _is_form_field(headers: Mapping[str, Any], part_name: str, value: bytes | bytearray) -> bool:
    """A multipart part without a Content-Type of its own that holds a little printable UTF-8 text."""
    if part_content_type(headers, part_name) or len(value) > FORM_FIELD_MAX_BYTES:
        return False
    try:
        text = bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n" for c in text)
