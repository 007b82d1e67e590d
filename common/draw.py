"""Draws the tagger's detections (boxes and labels) on a copy of the image they were found in.

Used by the client (``--draw``), the training curves' validation images and ``training.inspect``'s contact sheet,
so that annotated and predicted boxes look alike everywhere.
"""

from __future__ import annotations

import itertools
import os
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps


class DrawingFolder:
    """A folder that drawings are added to without writing over any file (``--draw``).

    Each drawing gets a name that no file in the folder has, compared without letter case (on a case-insensitive
    disk, such as macOS's and Windows' defaults, ``A.jpg`` and ``a.jpg`` are one file), and its file is created
    exclusively, so that a file that appears meanwhile is not replaced either.
    """

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        # Listed once; each name taken since (by a drawing, or by a file found on creating one) is added.
        self._taken = {name.casefold() for name in os.listdir(folder)}

    def draw(self, image_path: Path, detections: Iterable[Mapping[str, Any]]) -> Path:
        """Writes the image with one labelled box per detection to a new file of the folder and returns its path.

        The server applies the EXIF orientation before detecting, so the image is turned the same way here and
        the boxes (in the turned image's pixels) land on their objects. The file takes the image's own name
        (``.png`` when Pillow cannot write its suffix) when that is free, else ``<stem>.tagged<suffix>``, then
        ``<stem>.tagged-2<suffix>`` and so on.

        Args:
            image_path: the image that was sent.
            detections: the response's ``detections`` (``{"label", "score", "box": [x1, y1, x2, y2]}``).
        """
        with Image.open(image_path) as opened:
            image = draw_boxes(ImageOps.exif_transpose(opened).convert("RGB"), detections)
        wanted = writable_path(self.folder / image_path.name)
        image_format = Image.registered_extensions()[wanted.suffix.lower()]
        while True:
            output = self._free_name(wanted)
            self._taken.add(output.name.casefold())
            try:
                file = output.open("xb")
            except FileExistsError:  # created since the folder was listed: the next name
                continue
            break
        try:
            with file:
                image.save(file, format=image_format)
        except BaseException:  # a full disk: no half-written drawing stays behind
            output.unlink(missing_ok=True)
            raise
        return output

    def _free_name(self, wanted: Path) -> Path:
        """The first of ``wanted``, ``<stem>.tagged<suffix>``, ``<stem>.tagged-2<suffix>``... not taken yet."""
        names = itertools.chain([wanted.name, f"{wanted.stem}.tagged{wanted.suffix}"],
                                (f"{wanted.stem}.tagged-{count}{wanted.suffix}" for count in itertools.count(2)))
        return self.folder / next(name for name in names if name.casefold() not in self._taken)


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
    """The name a drawing of ``output`` wants: the same path, or ``.png`` when Pillow cannot write its suffix."""
    return output if output.suffix.lower() in _writable_suffixes() else output.with_suffix(".png")


def _writable_suffixes() -> set[str]:
    return {suffix for suffix, name in Image.registered_extensions().items() if name in Image.SAVE}
