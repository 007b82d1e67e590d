"""The two options of a tagging answer (response format, score threshold): their names, the values each may
take and how a value is read.

Shared on purpose by the two places an option is set: a request (``handler/request_parsing.py``, which answers
a bad value 422) and the ``handler:`` section of the model config (``handler/settings.py``, whose
``default_format`` and ``score_threshold`` are what a request that names none gets). A default is a value a
request could have sent, so both read values with the same rules, and a change here changes both. Neither
HTTP nor the config appears here: a bad value is an ``OptionError``, which each side reports its own way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .text import short_repr

RESPONSE_FORMATS = ("dict", "list")
FORMAT_FIELD = "format"
THRESHOLD_FIELD = "threshold"
# The fields of a form or a JSON body (and of a KServe request's parameters) that are options, not the image.
OPTION_FIELDS = (FORMAT_FIELD, THRESHOLD_FIELD)


class OptionError(ValueError):
    """A value an option cannot take; the message names the option and the value."""


@dataclass(frozen=True)
class TagOptions:
    """How one request wants its answer: ``response_format`` is "dict" or "list"."""

    response_format: str
    threshold: float


def parse_format(value: Any) -> str:
    """A response format name ("dict" or "list", any case, text or bytes).

    Raises:
        OptionError: for anything else.
    """
    text = _text(value, FORMAT_FIELD).strip().lower()
    if text not in RESPONSE_FORMATS:
        raise OptionError(f"format must be one of {', '.join(RESPONSE_FORMATS)}, got {short_repr(value)}")
    return text


def parse_threshold(value: Any) -> float:
    """A score threshold: a number (or its text) between 0 and 1.

    Raises:
        OptionError: for anything else.
    """
    problem = OptionError(f"threshold must be a number from 0 to 1, got {short_repr(value)}")
    if isinstance(value, bool):
        raise problem
    try:
        threshold = float(value) if isinstance(value, (int, float)) else float(_text(value, THRESHOLD_FIELD))
    except (ValueError, OverflowError):  # OverflowError: an integer too large for a float (400 digits)
        raise problem from None
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise problem
    return threshold


def _text(value: Any, field: str) -> str:
    """A value as text; bytes (a multipart field without a filename arrives so) are read as UTF-8."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise OptionError(f"{field} must be UTF-8 text") from None
    raise OptionError(f"{field} must be text, got {short_repr(value)}")
