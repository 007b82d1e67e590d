"""Checks a data set before hours of training: what was found, what it holds, what was fixed, how it looks.

    python -m training.inspect data/my_photos                  # or: make inspect DATA=data/my_photos
    python -m training.inspect data.yaml --backbone resnet50 --sheet check.png

Prints the layout found, images, boxes and negatives per split and per class, the boxes' sizes in the model's
input (after its resizing) against its anchors, and every problem the loaders fixed or skipped; writes a
contact sheet of training images with their boxes and labels drawn as the client draws detections. Reads the
splits exactly as ``training.train`` with the same options would, and exits with 1 when that training could
not start (a split missing or unusable, no box at all).
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.functional import to_pil_image

from common.draw import draw_boxes
from handler.decode import ModelInputSize
from training.datasets import DatasetError, DatasetWarning, DetectionDataset, UnreadableImage, open_dataset
from training.layouts import FORMATS
from training.options import TRAIN_SPLIT, VAL_SPLIT, parse_class_names, parse_overrides
from training.presets import DEFAULT_PRESET, PRESETS, model_config

SHEET_CELL = 320  # pixels of the longer side of each contact-sheet image
SHEET_COLUMNS = 4


@dataclass
class SplitReport:
    """One split as the training would read it."""

    name: str
    dataset: DetectionDataset | None = None
    error: str | None = None  # why it cannot be read
    problems: list[str] = field(default_factory=list)  # the loaders' warnings


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="data set folder, COCO .json or YOLO data.yaml (as training's --data)")
    parser.add_argument("--format", default=None, choices=FORMATS, help="skip the layout guess")
    parser.add_argument("--train-split", default=TRAIN_SPLIT)
    parser.add_argument("--val-split", default=VAL_SPLIT, help="'' when there is none")
    parser.add_argument("--classes", default=None, help="comma-separated class names, as training's --classes")
    parser.add_argument("--backbone", default=DEFAULT_PRESET,
                        help=f"whose input size and anchors the boxes are measured against: {', '.join(PRESETS)}")
    parser.add_argument("--model-override", action="append", default=[], metavar="KEY=VALUE",
                        help="as training's --model-override (e.g. min_size=600)")
    parser.add_argument("--sheet", default="inspect.png", help="the contact sheet PNG to write")
    parser.add_argument("--sheet-images", type=int, default=12, help="training images on the contact sheet")
    return parser


def read_split(data: str, split: str, *, format: str | None, class_names: list[str] | None,
               include_difficult: bool) -> SplitReport:
    report = SplitReport(name=split)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DatasetWarning)
        try:
            report.dataset = open_dataset(data, split, format=format, class_names=class_names,
                                          include_difficult=include_difficult)
        except DatasetError as exc:
            report.error = str(exc)
    report.problems = [str(w.message) for w in caught if issubclass(w.category, DatasetWarning)]
    return report


def count_table(splits: list[SplitReport], class_names: list[str]) -> list[str]:
    """Images, boxes and negatives per split, then boxes per class and split."""
    readable = [s for s in splits if s.dataset is not None]
    width = max([len(name) for name in class_names] + [len("negatives"), 8])
    lines = [f"{'split':<{width}}" + "".join(f"{s.name:>10}" for s in readable)]
    for label, count in (("images", lambda r: 1), ("boxes", lambda r: len(r.labels)),
                         ("negatives", lambda r: int(not r.labels))):
        lines.append(f"{label:<{width}}" + "".join(f"{sum(count(r) for r in s.dataset.records):>10}"
                                                  for s in readable))
    lines.append("boxes per class:")
    for number, name in enumerate(class_names, start=1):
        lines.append(f"{name:<{width}}" + "".join(
            f"{sum(r.labels.count(number) for r in s.dataset.records):>10}" for s in readable))
    return lines


def box_size_lines(dataset: DetectionDataset, config: dict) -> list[str]:
    """Box sizes (square root of the area) in the model's input pixels, against its anchor sizes.

    A box under half the smallest anchor overlaps it by IoU < 0.25 even when centred on it, below the RPN's
    background threshold (0.3): only its one best anchor is a positive, every other anchor around it is taught
    background. A class whose median box is that small gets a warning naming the override that fits it.
    """
    min_size, max_size, anchors = config["min_size"], config["max_size"], sorted(config["anchor_sizes"])
    input_size = ModelInputSize(min_size=min_size, max_size=max_size)
    sides_by_class: dict[str, list[float]] = {name: [] for name in dataset.class_names}
    for record in dataset.records:
        scale = input_size.scale(record.width, record.height)
        for (x1, y1, x2, y2), label in zip(record.boxes, record.labels):
            sides_by_class[dataset.class_names[label - 1]].append(math.sqrt((x2 - x1) * (y2 - y1)) * scale)
    lines = [f"box sizes (square root of the area) in the {config['backbone']} model's input: short side "
             f"{min_size} px, long side at most {max_size} px, anchors {', '.join(map(str, anchors))} px"]
    sides = sorted(side for class_sides in sides_by_class.values() for side in class_sides)
    if not sides:
        return lines + ["  no boxes"]
    lines.append(f"  min {sides[0]:.0f}, 10% {_at(sides, 0.1):.0f}, median {_at(sides, 0.5):.0f}, "
                 f"90% {_at(sides, 0.9):.0f}, max {sides[-1]:.0f} px ({len(sides)} training boxes)")
    small = sum(side < anchors[0] / 2 for side in sides)
    large = sum(side > anchors[-1] * 2 for side in sides)
    if small:
        lines.append(f"  under half the smallest anchor, matching no anchor well: {_boxes(small, len(sides))} "
                     "(--model-override anchor_sizes=[...] or min_size=...)")
    if large:
        lines.append(f"  over twice the largest anchor, matching no anchor well: {_boxes(large, len(sides))}")
    for name, class_sides in sides_by_class.items():
        median = _at(sorted(class_sides), 0.5) if class_sides else None
        if median is not None and median < anchors[0] / 2:
            lines.append(f"  warning: {name} boxes (median {median:.0f} px) are under half the smallest anchor "
                         f"({anchors[0]} px): no anchor matches them well (IoU < 0.25 even when centred); "
                         + _small_box_fix(median, anchors, config))
    return lines


def _at(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def _small_box_fix(median: float, anchors: list[int], config: dict) -> str:
    """The overrides that bring a box side of ``median`` px to half the smallest anchor or more.

    Args:
        anchors: the model's anchor sizes, smallest first.
    """
    smallest, halves = anchors[0], []
    while median < smallest / 2 and smallest >= 2:
        smallest //= 2
        halves.insert(0, smallest)
    # Or a larger input: sizes scaled by the factor that brings the median to half the smallest anchor.
    factor = anchors[0] / 2 / median
    min_size, max_size = (32 * math.ceil(config[key] * factor / 32) for key in ("min_size", "max_size"))
    return (f"--model-override anchor_sizes=[{','.join(map(str, halves + anchors))}], or a larger input: "
            f"--model-override min_size={min_size} --model-override max_size={max_size}")


def _boxes(count: int, total: int) -> str:
    return f"{count} box{'es' if count != 1 else ''} ({100 * count / total:.0f}%)"


def write_contact_sheet(dataset: DetectionDataset, output: Path, count: int) -> tuple[Path, int]:
    """Up to ``count`` images spread over the set, boxes and labels drawn; returns the path and images drawn."""
    step = max(1, len(dataset) // max(count, 1))
    cells = []
    for index in range(0, len(dataset), step)[:count]:
        sample = dataset[index]
        if isinstance(sample, UnreadableImage):
            continue
        image, target = sample
        picture = to_pil_image(image)
        scale = SHEET_CELL / max(picture.size)
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))))
        boxes = [{"label": dataset.class_names[label - 1], "box": [c * scale for c in box]}
                 for box, label in zip(target["boxes"].tolist(), target["labels"].tolist())]
        cells.append((draw_boxes(picture, boxes), dataset.image_path(index).name))
    caption = 18
    font = ImageFont.load_default(size=12)
    rows = max(1, math.ceil(len(cells) / SHEET_COLUMNS))
    sheet = Image.new("RGB", (SHEET_COLUMNS * SHEET_CELL, rows * (SHEET_CELL + caption)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for number, (picture, name) in enumerate(cells):
        x, y = (number % SHEET_COLUMNS) * SHEET_CELL, (number // SHEET_COLUMNS) * (SHEET_CELL + caption)
        sheet.paste(picture, (x, y))
        draw.text((x + 4, y + SHEET_CELL + 2), name, fill=(0, 0, 0), font=font)
    output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output, format="PNG")
    return output, len(cells)


def inspect(args: argparse.Namespace) -> tuple[list[str], bool]:
    """The report's lines, and whether training with these options could start."""
    train = read_split(args.data, args.train_split, format=args.format, class_names=parse_class_names(args.classes),
                       include_difficult=False)
    splits = [train]
    if args.val_split and train.dataset is not None:
        splits.append(read_split(args.data, args.val_split, format=args.format,
                                 class_names=train.dataset.class_names, include_difficult=True))
    lines = [f"data set: {args.data}"]
    if train.dataset is not None:
        names = train.dataset.class_names
        lines += [f"layout:   {train.dataset.layout}",
                  f"classes:  {len(names)} ({', '.join(names)})", ""]
        lines += count_table(splits, names) + [""]
        config = model_config(args.backbone, len(names) + 1, **parse_overrides(args.model_override))
        lines += box_size_lines(train.dataset, config) + [""]
    lines.append("problems the loaders fixed or skipped:")
    for split in splits:
        for problem in ([f"cannot be read: {split.error}"] if split.error else split.problems) or ["none"]:
            lines.append(f"  {split.name}: {problem}")
    failures = [f"the {s.name} split cannot be read" for s in splits if s.error]
    if train.dataset is not None and not any(r.labels for r in train.dataset.records):
        failures.append(f"the {train.name} split has no boxes")
    if train.dataset is not None:
        sheet, drawn = write_contact_sheet(train.dataset, Path(args.sheet), args.sheet_images)
        lines.append(f"contact sheet: {sheet} ({drawn} {train.name} images with their boxes)")
    lines.append(f"cannot train: {'; '.join(failures)}" if failures else
                 "ok: training.train can start with these options")
    return lines, not failures


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        lines, can_train = inspect(args)
    except ValueError as exc:  # an unknown backbone or model setting
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0 if can_train else 1


if __name__ == "__main__":
    sys.exit(main())
