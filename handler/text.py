"""Text for people: an exception, a traceback, a long text or a value as one short line.

Standard library only, so every part of the project (the client included) can import it.
"""

from __future__ import annotations


def error_line(exc: BaseException, *, with_type: bool = False) -> str:
    """The first non-blank line of an exception's message; its type's name when it has no message.

    Args:
        exc: the exception.
        with_type: start with ``"Type: "``, for exceptions whose type says what went wrong (``KeyError: 'boxes'``).
    """
    lines = _lines(exc)
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if with_type else lines[0]


def last_line(text: object) -> str:
    """The last non-blank line of a text: where a traceback (another program's stderr) states its error."""
    lines = _lines(text)
    return lines[-1] if lines else "no message"


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in ``...`` when it was cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_repr(value: object, limit: int = 40) -> str:
    """A value as a message quotes it: its ``repr`` (bytes read as UTF-8 text first), at most ``limit`` long."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    return shorten(repr(value), limit)


def _lines(text: object) -> list[str]:
    """The non-blank lines of ``str(text)``, stripped."""
    return [line.strip() for line in str(text).splitlines() if line.strip()]
