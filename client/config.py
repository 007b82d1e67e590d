"""Where the tagger is served: the addresses and the archive named in TorchServe's ``config.properties``.

That file is the one home of the endpoint (``inference_address``, the model name of ``load_models``) and of
the archive path (``model_store``/``load_models``); the client, ``make serve``, ``make archive`` and the
benchmark read them from here. Read without TorchServe's packages: the client needs only requests and Pillow.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from project import SERVE_DIR, SERVER_CONFIG

# java.util.Properties: what separates a key from its value, and the escapes it decodes.
_BLANKS = " \t\f"
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


class ServerConfigError(ValueError):
    """config.properties is missing or lacks a setting the tools need."""


@dataclass(frozen=True)
class ServerConfig:
    """The served model's addresses and archive (``archive`` inside the folder TorchServe starts in)."""

    inference_url: str
    management_url: str
    archive: Path
    model_name: str

    @property
    def predictions_url(self) -> str:
        """The inference endpoint, e.g. ``http://127.0.0.1:8080/predictions/tagger``."""
        return f"{self.inference_url}/predictions/{self.model_name}"


def read_server_config(path: str | os.PathLike = SERVER_CONFIG, *, start_dir: Path = SERVE_DIR) -> ServerConfig:
    """The addresses and the served archive from a TorchServe ``config.properties``.

    Args:
        path: the properties file (default: the project's).
        start_dir: the folder TorchServe starts in, which a relative ``model_store`` is taken from (default:
            the one of ``make serve``).

    Raises:
        ServerConfigError: the file is missing or unreadable, or lacks an address, ``model_store`` or
            ``load_models``.
    """
    path = Path(path)
    if not path.is_file():
        raise ServerConfigError(f"{path} not found")
    properties = read_properties(path)
    try:
        archive_name = properties["load_models"].split(",")[0].strip()
        model_store = start_dir / properties["model_store"]
        inference_url, management_url = properties["inference_address"], properties["management_address"]
    except KeyError as exc:
        raise ServerConfigError(f"{path} has no {exc.args[0]} setting") from None
    # load_models entries are "file.mar" or "name=file.mar".
    model_name, _, archive_file = archive_name.rpartition("=")
    return ServerConfig(
        inference_url=inference_url,
        management_url=management_url,
        archive=model_store / archive_file,
        model_name=model_name or Path(archive_file).stem,
    )


def read_properties(path: str | os.PathLike) -> dict[str, str]:
    """The settings of a properties file, read as TorchServe reads them.

    Its Java front end loads the file with ``java.util.Properties``: ``#`` and ``!`` start comment lines,
    a key ends at the first ``=``, ``:`` or blank, a line ending in ``\\`` goes on in the next one, and
    ``\\t``, ``\\uXXXX``... are decoded. Values are trimmed, as TorchServe's Python launcher
    (``ts.model_server.load_properties``: ``key=value`` lines and ``#`` comments only) reads ``model_store``;
    both read every line of that form alike.

    Raises:
        ServerConfigError: the file cannot be read, or a ``\\u`` escape is not four hex digits.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ServerConfigError(f"cannot read {path}: {exc}") from None
    properties = {}
    for line in _logical_lines(text):
        key, value = _split_key(line)
        try:
            properties[_unescape(key)] = _unescape(value).strip()
        except ValueError:
            raise ServerConfigError(f"{path}: a \\u escape without four hex digits in {line!r}") from None
    return properties


def _logical_lines(text: str) -> Iterator[str]:
    """The setting lines: comments and blank lines dropped, continued lines joined (their leading blanks too)."""
    joined = None
    for natural in re.split(r"\r\n|\r|\n", text):
        line = natural.lstrip(_BLANKS)
        if joined is None and (not line or line[0] in "#!"):
            continue
        backslashes = len(line) - len(line.rstrip("\\"))
        if backslashes % 2:
            joined = (joined or "") + line[:-1]
            continue
        yield (joined or "") + line
        joined = None
    if joined:
        yield joined


def _split_key(line: str) -> tuple[str, str]:
    """A line's key and value (still escaped): the key ends at the first unescaped ``=``, ``:`` or blank;
    blanks and one ``=`` or ``:`` after it are skipped."""
    end, escaped = 0, False
    while end < len(line) and (escaped or line[end] not in "=:" + _BLANKS):
        escaped = line[end] == "\\" and not escaped
        end += 1
    rest = line[end:].lstrip(_BLANKS)
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(_BLANKS)
    return line[:end], rest


def _unescape(text: str) -> str:
    """``\\uXXXX``, ``\\t``, ``\\n``, ``\\r``, ``\\f`` decoded, and any other escaped character as itself.

    Raises:
        ValueError: a ``\\u`` without four hex digits.
    """
    return re.sub(r"\\(u(.{0,4})|.)", _decode_escape, text, flags=re.DOTALL)


def _decode_escape(match: re.Match) -> str:
    if match[2] is not None:
        if not re.fullmatch(r"[0-9a-fA-F]{4}", match[2]):
            raise ValueError(match[0])
        return chr(int(match[2], 16))
    return _ESCAPES.get(match[1], match[1])
