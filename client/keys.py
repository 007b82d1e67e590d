"""Reads the keys TorchServe writes to ``key_file.json`` (token authorization, on by default in 0.12).

The file lies in the folder TorchServe was started in. The inference key is sent as
``Authorization: Bearer <key>`` to the inference API (``/predictions``, ``/ping``), the management key to
the management API. Both expire (60 minutes by default); the API key does not and renews them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from handler.text import error_line
from project import SERVE_DIR

# TorchServe's name for it, in the folder it starts in.
KEY_FILE = Path("key_file.json")
SERVED_KEY_FILE = SERVE_DIR / KEY_FILE  # the one of `make serve`


class KeyFileError(ValueError):
    """key_file.json is missing or not in TorchServe's format."""


@dataclass(frozen=True)
class TorchServeKeys:
    inference: str
    management: str
    api: str
    inference_expires: datetime
    management_expires: datetime


def read_keys(path: str | os.PathLike) -> TorchServeKeys:
    """Parses TorchServe's key file.

    Args:
        path: the ``key_file.json`` in the folder TorchServe was started in.

    Raises:
        KeyFileError: the file is missing (TorchServe not started there) or not a TorchServe key file.
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text())
        return TorchServeKeys(
            inference=content["inference"]["key"],
            management=content["management"]["key"],
            api=content["API"]["key"],
            inference_expires=_expiry(content["inference"]["expiration time"]),
            management_expires=_expiry(content["management"]["expiration time"]),
        )
    except FileNotFoundError:
        raise KeyFileError(
            f"{path} not found: TorchServe writes it in the folder it starts in (make serve) "
            "and deletes it when it stops"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"{path} is not a TorchServe key file ({error_line(exc, with_type=True)})") from None


def _expiry(text: str) -> datetime:
    # TorchServe writes nanoseconds ("2026-11-26T07:48:35.291173274Z"), more than fromisoformat reads.
    return datetime.fromisoformat(text.split(".")[0].rstrip("Z")).replace(tzinfo=timezone.utc)


def bearer(key: str) -> dict[str, str]:
    """The header that authorizes a call with ``key`` ("Bearer" capitalised: TorchServe refuses "bearer")."""
    return {"Authorization": f"Bearer {key}"}
