"""The options ``training.train`` and ``training.inspect`` share, with one default and one parser each: inspect
reads a data set as training with the same options would.
"""

from __future__ import annotations

import json
from typing import Any

TRAIN_SPLIT = "train"
VAL_SPLIT = "val"  # evaluated after each epoch


def parse_class_names(text: str | None) -> list[str] | None:
    """``--classes`` (comma-separated names, fixing their order) as a list; None when not given."""
    return [name.strip() for name in text.split(",")] if text else None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--model-override KEY=VALUE`` items as model settings (JSON values; other text as a string).

    Raises:
        ValueError: an item without ``=``.
    """
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--model-override needs KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides
