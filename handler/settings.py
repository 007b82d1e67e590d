"""Serving knobs of the tagger: their defaults (here, their one home) and the ``handler:`` section of
``model/model-config.yaml`` that overrides them."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from .precision import CPU_PRECISIONS
from .request_parsing import RequestError, parse_format, parse_threshold

# Keys of the same section that TorchServe itself reads (``profile`` switches on its @timed decorator).
TORCHSERVE_KEYS = frozenset({"profile"})


@dataclass(frozen=True)
class ServingSettings:
    """Defaults a request may override (threshold, format) and limits it may not.

    Args:
        score_threshold: detections scoring below it are not reported.
        max_detections: at most this many detections per response, best first.
        default_format: "dict" or "list", for requests that ask for neither.
        max_pixels: images with more pixels are refused before decoding; None means no limit.
        half_precision / channels_last: GPU speed-ups; ignored on CPU.
        cpu_precision: "auto", "float32" or "bfloat16" on CPU (``handler/precision.py``); "auto" takes
            bfloat16 where the CPU computes it natively, float32 elsewhere. Ignored on a GPU.
        torch_threads: threads of one CPU worker; None gives each worker its share of the cores
            (``handler/sizing.py``).
    """

    score_threshold: float = 0.5
    max_detections: int = 100
    default_format: str = "dict"
    max_pixels: int | None = 40_000_000
    half_precision: bool = False
    cpu_precision: str = "auto"
    channels_last: bool = False
    torch_threads: int | None = None


def settings_from_config(section: Mapping[str, Any] | None) -> ServingSettings:
    """Reads and checks the ``handler:`` section; missing keys keep their defaults.

    Raises:
        ValueError: an unknown key or a value of the wrong kind, named in the message.
    """
    section = dict(section or {})
    known = {f.name for f in fields(ServingSettings)}
    unknown = sorted(set(section) - known - TORCHSERVE_KEYS)
    if unknown:
        raise ValueError(
            f"unknown key(s) in the handler section of the model config: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )
    values = {key: section[key] for key in known if key in section}
    try:
        if "score_threshold" in values:
            values["score_threshold"] = parse_threshold(values["score_threshold"])
        if "default_format" in values:
            values["default_format"] = parse_format(values["default_format"])
    except RequestError as error:
        raise ValueError(f"handler section of the model config: {error}") from None
    for key in ("max_detections", "max_pixels", "torch_threads"):
        value = values.get(key, 1)
        if not (value is None and key != "max_detections") and (type(value) is not int or value < 1):
            raise ValueError(f"handler section of the model config: {key} must be a positive integer, got {value!r}")
    for key in ("half_precision", "channels_last"):
        if not isinstance(values.get(key, False), bool):
            raise ValueError(f"handler section of the model config: {key} must be true or false, got {values[key]!r}")
    if values.get("cpu_precision", "auto") not in CPU_PRECISIONS:
        raise ValueError(f"handler section of the model config: cpu_precision must be one of "
                         f"{', '.join(CPU_PRECISIONS)}, got {values['cpu_precision']!r}")
    return ServingSettings(**values)
