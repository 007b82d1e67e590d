"""Serving knobs of the tagger: their defaults (here, their one home) and the ``handler:`` section of
``model/model-config.yaml`` that overrides them."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from .options import OptionError, parse_format, parse_threshold
from .precision import CPU_RUNTIMES


@dataclass(frozen=True)
class ServingSettings:
    """Defaults a request may override (threshold, format) and limits it may not.

    Args:
        score_threshold: detections scoring below it are not reported.
        max_detections: at most this many detections per response, best first.
        default_format: "dict" or "list", for requests that ask for neither.
        max_pixels: images with more pixels are refused before decoding; None means no limit.
        half_precision / channels_last: GPU speed-ups; ignored on CPU.
        cpu_runtime: "auto", "float32", "bfloat16" or "onnxruntime" on CPU (``handler/precision.py``); "auto"
            takes bfloat16 where the CPU computes it natively, else ONNX Runtime where it is installed, else
            float32. Ignored on a GPU.
        torch_threads: threads of one CPU worker; None gives each worker its share of the cores
            (``handler/sizing.py``).
    """

    score_threshold: float = 0.5
    max_detections: int = 100
    default_format: str = "dict"
    max_pixels: int | None = 40_000_000
    half_precision: bool = False
    cpu_runtime: str = "auto"
    channels_last: bool = False
    torch_threads: int | None = None


def settings_from_config(section: Mapping[str, Any] | None) -> ServingSettings:
    """Reads and checks the ``handler:`` section; missing keys keep their defaults.

    Raises:
        ValueError: an unknown key or a value of the wrong kind, named in the message.
    """
    section = dict(section or {})
    known = {f.name for f in fields(ServingSettings)}
    unknown = sorted(set(section) - known)
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
    except OptionError as error:
        raise ValueError(f"handler section of the model config: {error}") from None
    for key in ("max_detections", "max_pixels", "torch_threads"):
        value = values.get(key, 1)
        if not (value is None and key != "max_detections") and (type(value) is not int or value < 1):
            raise ValueError(f"handler section of the model config: {key} must be a positive integer, got {value!r}")
    for key in ("half_precision", "channels_last"):
        if not isinstance(values.get(key, False), bool):
            raise ValueError(f"handler section of the model config: {key} must be true or false, got {values[key]!r}")
    if values.get("cpu_runtime", "auto") not in CPU_RUNTIMES:
        raise ValueError(f"handler section of the model config: cpu_runtime must be one of "
                         f"{', '.join(CPU_RUNTIMES)}, got {values['cpu_runtime']!r}")
    return ServingSettings(**values)
