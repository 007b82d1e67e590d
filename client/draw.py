"""Draws the tagger's detections (boxes and labels) on a copy of the image they were found in."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps


def draw_detections(image_path: Path, detections: Iterable[Mapping[str, Any]], output: Path) -> Path:
    """Writes ``output``: the image with one labelled box per detection.

    The server applies the EXIF orientation before detecting, so the image is turned the same way here and
    the boxes (in the turned image's pixels) land on their objects.

    Args:
        image_path: the image that was sent.
        detections: the response's ``detections`` (``{"label", "score", "box": [x1, y1, x2, y2]}``).
        output: the file to write; its suffix picks the format (PNG when Pillow cannot write that suffix).

    Returns:
        the path written.
    """
    with Image.open(image_path) as opened:
        image = draw_boxes(ImageOps.exif_transpose(opened).convert("RGB"), detections)
    output = writable_path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    image.save(output)
    return output


def draw_boxes(image: Image.Image, detections: Iterable[Mapping[str, Any]]) -> Image.Image:
    """Draws one labelled box per detection onto ``image`` (an RGB picture, changed in place) and returns it.

    Args:
        detections: ``{"label", "box": [x1, y1, x2, y2]}`` with an optional ``"score"``, written after the
            label (annotated boxes have none).
    """
    draw = ImageDraw.Draw(image)
    line = max(2, round(min(image.size) / 200))
    font = ImageFont.load_default(size=max(12, min(image.size) // 30))
    for detection in detections:
        color = label_color(detection["label"])
        x1, y1, x2, y2 = detection["box"]
        draw.rectangle((x1, y1, x2, y2), outline=color, width=line)
        text = f"{detection['label']} {detection['score']:.2f}" if "score" in detection else detection["label"]
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        height = bottom - top + 2 * line
        # The label sits on the box's top edge, or inside the box when the edge is at the image's top.
        y = y1 - height if y1 >= height else y1
        draw.rectangle((x1, y, x1 + right - left + 2 * line, y + height), fill=color)
        draw.text((x1 + line, y + line - top), text, fill=(255, 255, 255), font=font)
    return image


def label_color(label: str) -> tuple[int, int, int]:
    """A dark color that is the same for a label in every image (readable under white text)."""
    hue = zlib.crc32(label.encode("utf-8")) % 360
    red, green, blue = Image.new("HSV", (1, 1), (round(hue * 255 / 360), 220, 170)).convert("RGB").getpixel((0, 0))
    return red, green, blue


def writable_path(output: Path) -> Path:
    """The file ``draw_detections`` writes for ``output``: the same path, or ``.png`` when Pillow cannot write
    its suffix."""
    return output if output.suffix.lower() in _writable_suffixes() else output.with_suffix(".png")


def _writable_suffixes() -> set[str]:
    return {suffix for suffix, name in Image.registered_extensions().items() if name in Image.SAVE}
