"""A synthetic detection data set: 22 coloured shapes on cluttered backgrounds, deterministic by seed.

Written in both Pascal VOC form (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/{split}.txt``) and
COCO form (``annotations/instances_{split}.json``, file names relative to ``JPEGImages/``). The demo model
and the tests train on it, so no data set has to be downloaded.

    python -m training.synthetic --output data/synthetic --num-train 2000 --num-val 100 --num-test 100
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path
from typing import Callable
from xml.etree import ElementTree as ET

from PIL import Image, ImageDraw, ImageFilter

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 190),
    "orange": (245, 130, 20),
    "cyan": (20, 200, 210),
    "pink": (245, 100, 180),
}

# Each shape comes in two colours chosen far apart, so every class differs from the others in shape or hue.
# Sorted by name, the order a VOC reader gives them, so label numbers agree whichever form is read.
CLASS_SPECS: list[tuple[str, str]] = sorted([
    ("red", "circle"), ("blue", "circle"),
    ("green", "square"), ("orange", "square"),
    ("yellow", "triangle"), ("purple", "triangle"),
    ("cyan", "diamond"), ("red", "diamond"),
    ("blue", "star"), ("yellow", "star"),
    ("pink", "cross"), ("green", "cross"),
    ("orange", "ring"), ("cyan", "ring"),
    ("purple", "hexagon"), ("green", "hexagon"),
    ("red", "heart"), ("pink", "heart"),
    ("blue", "arrow"), ("orange", "arrow"),
    ("yellow", "moon"), ("purple", "moon"),
], key=lambda spec: " ".join(spec))
CLASS_NAMES: list[str] = [f"{color} {shape}" for color, shape in CLASS_SPECS]
SPLITS = ("train", "val", "test")
# Object sides relative to the image's short side (28-96 px at 320x320).
OBJECT_SCALE = (0.0875, 0.3)
# Image sides drawn for a data set of varied sizes: photos come in every size and shape, and the model's
# transform resizes each one, so the demo model sees the scales and aspect ratios it will be sent.
SIDE_RANGE = (240, 800)
MAX_ASPECT = 2.0


def _regular_polygon(n: int, size: int, phase: float = -math.pi / 2, inner: float | None = None):
    """Corners of a regular n-gon (or a star when ``inner`` is set) filling a size x size square."""
    r, c = size / 2, size / 2
    points = []
    steps = n * 2 if inner else n
    for k in range(steps):
        radius = r * inner if inner and k % 2 else r
        angle = phase + 2 * math.pi * k / steps
        points.append((c + radius * math.cos(angle), c + radius * math.sin(angle)))
    return points


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, s: int) -> None:
    """Draws one shape in white on a size x size mask."""
    e = s - 1
    if shape == "circle":
        draw.ellipse([0, 0, e, e], fill=255)
    elif shape == "square":
        draw.rectangle([0, 0, e, e], fill=255)
    elif shape == "triangle":
        draw.polygon([(s / 2, 0), (e, e), (0, e)], fill=255)
    elif shape == "diamond":
        draw.polygon([(s / 2, 0), (e, s / 2), (s / 2, e), (0, s / 2)], fill=255)
    elif shape == "star":
        draw.polygon(_regular_polygon(5, s, inner=0.45), fill=255)
    elif shape == "cross":
        t = s // 3
        draw.rectangle([t, 0, e - t, e], fill=255)
        draw.rectangle([0, t, e, e - t], fill=255)
    elif shape == "ring":
        draw.ellipse([0, 0, e, e], fill=255)
        draw.ellipse([s * 0.28, s * 0.28, e - s * 0.28, e - s * 0.28], fill=0)
    elif shape == "hexagon":
        draw.polygon(_regular_polygon(6, s, phase=0.0), fill=255)
    elif shape == "heart":
        r = s / 4
        draw.ellipse([0, 0, 2 * r, 2 * r], fill=255)
        draw.ellipse([e - 2 * r, 0, e, 2 * r], fill=255)
        draw.polygon([(0.5, r * 1.3), (e - 0.5, r * 1.3), (s / 2, e)], fill=255)
    elif shape == "arrow":
        t = s // 4
        draw.rectangle([0, s / 2 - t / 2, s * 0.55, s / 2 + t / 2], fill=255)
        draw.polygon([(s * 0.5, 0), (e, s / 2), (s * 0.5, e)], fill=255)
    elif shape == "moon":
        draw.ellipse([0, 0, e, e], fill=255)
        draw.ellipse([s * 0.35, -s * 0.1, e + s * 0.35, e - s * 0.1], fill=0)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _cluttered_background(rng: random.Random, width: int, height: int) -> Image.Image:
    """Muted gradient with grey strokes and blobs: texture the detector must learn to ignore."""
    k = min(width, height) / 320  # clutter scales with the image, as the objects do
    base = [rng.randint(90, 200) for _ in range(3)]
    image = Image.new("RGB", (width, height), tuple(base))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(15, 35)):
        grey = rng.randint(60, 220)
        tint = tuple(min(255, max(0, grey + rng.randint(-20, 20))) for _ in range(3))
        x, y = rng.randrange(width), rng.randrange(height)
        if rng.random() < 0.6:
            draw.line([x, y, x + k * rng.randint(-120, 120), y + k * rng.randint(-120, 120)],
                      fill=tint, width=max(1, round(k * rng.randint(1, 4))))
        else:
            r = k * rng.randint(4, 30)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tint)
    return image.filter(ImageFilter.GaussianBlur(radius=0.8))


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def render_image(
    rng: random.Random, *, width: int = 320, height: int = 320, min_objects: int = 2, max_objects: int = 5,
    object_scale: tuple[float, float] = OBJECT_SCALE,
) -> tuple[Image.Image, list[tuple[int, list[int]]]]:
    """One image and its objects as (class index into CLASS_NAMES, [x1, y1, x2, y2]) pairs.

    Args:
        object_scale: smallest and largest object side as fractions of the image's short side, so a
            scene looks alike at any resolution (28 to 96 px at 320x320).
    """
    image = _cluttered_background(rng, width, height)
    short = min(width, height)
    min_size, max_size = (max(8, round(short * fraction)) for fraction in object_scale)
    objects: list[tuple[int, list[int]]] = []
    for _ in range(rng.randint(min_objects, max_objects)):
        for _attempt in range(20):
            size = rng.randint(min_size, min(max_size, width, height))
            x, y = rng.randint(0, width - size), rng.randint(0, height - size)
            if all(_iou([x, y, x + size, y + size], box) < 0.05 for _, box in objects):
                break
        else:
            continue
        label = rng.randrange(len(CLASS_SPECS))
        color_name, shape = CLASS_SPECS[label]
        mask = Image.new("L", (size, size), 0)
        _draw_shape(ImageDraw.Draw(mask), shape, size)
        mask = mask.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR) if shape != "circle" else mask
        left, top, right, bottom = mask.getbbox()
        color = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in COLORS[color_name])
        image.paste(Image.new("RGB", (size, size), color), (x, y), mask)
        objects.append((label, [x + left, y + top, x + right, y + bottom]))
    return image, objects


def _voc_xml(file_name: str, width: int, height: int, objects) -> ET.ElementTree:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = file_name
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for label, (x1, y1, x2, y2) in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = CLASS_NAMES[label]
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        # VOC pixel indices are 1-based and inclusive.
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root)
    return ET.ElementTree(root)


def image_size(rng: random.Random, side_range: tuple[int, int] = SIDE_RANGE) -> tuple[int, int]:
    """A random (width, height): the long side in ``side_range``, aspect ratio up to ``MAX_ASPECT``."""
    long_side = rng.randint(*side_range)
    short_side = max(side_range[0] // 2, round(long_side / rng.uniform(1.0, MAX_ASPECT)))
    return (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)


def write_dataset(
    output: str | Path, *, counts: dict[str, int], seed: int = 0, size: tuple[int, int] | None = None,
    side_range: tuple[int, int] = SIDE_RANGE, progress: Callable[[str], None] | None = None,
) -> Path:
    """Writes the splits named in ``counts`` (e.g. {"train": 2000, "val": 100, "test": 100}).

    Each split has its own random stream, so growing the train split leaves val and test unchanged.

    Args:
        size: (width, height) of every image; None draws each image's size (``image_size``).
        side_range: the range of the long side when ``size`` is None.
    """
    output = Path(output)
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main", "annotations"):
        (output / folder).mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASS_NAMES)]
    for split_index, (split, count) in enumerate(counts.items()):
        rng = random.Random(f"{seed}-{split}")
        ids, images, annotations = [], [], []
        for n in range(count):
            stem = f"{split}_{n:05d}"
            width, height = size or image_size(rng, side_range)
            image, objects = render_image(rng, width=width, height=height)
            image.save(output / "JPEGImages" / f"{stem}.jpg", quality=92)
            _voc_xml(f"{stem}.jpg", width, height, objects).write(output / "Annotations" / f"{stem}.xml")
            image_id = split_index * 1_000_000 + n + 1
            ids.append(stem)
            images.append({"id": image_id, "file_name": f"{stem}.jpg", "width": width, "height": height})
            for label, (x1, y1, x2, y2) in objects:
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                })
        (output / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        coco = {"images": images, "annotations": annotations, "categories": categories}
        (output / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        if progress:
            progress(f"{split}: {count} images, {len(annotations)} objects")
    return output


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="folder to write the data set into")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--num-test", type=int, default=100)
    parser.add_argument("--width", type=int, help="fixed image width (with --height); default: varied sizes")
    parser.add_argument("--height", type=int, help="fixed image height (with --width)")
    parser.add_argument("--min-side", type=int, default=SIDE_RANGE[0], help="smallest long side of varied sizes")
    parser.add_argument("--max-side", type=int, default=SIDE_RANGE[1], help="largest long side of varied sizes")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    counts = {"train": args.num_train, "val": args.num_val, "test": args.num_test}
    fixed = (args.width, args.height)
    if (None in fixed) != (fixed == (None, None)):
        print("error: give both --width and --height, or neither (varied sizes)", file=sys.stderr)
        return 2
    sides = [side for side in (*fixed, args.min_side, args.max_side) if side is not None]
    if any(n < 0 for n in counts.values()) or min(sides) < 64 or args.min_side > args.max_side:
        print("error: counts must be >= 0, images at least 64x64 and --min-side <= --max-side", file=sys.stderr)
        return 2
    write_dataset(args.output, counts=counts, seed=args.seed, size=None if args.width is None else fixed,
                  side_range=(args.min_side, args.max_side), progress=print)
    print(f"wrote {args.output} ({len(CLASS_NAMES)} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
