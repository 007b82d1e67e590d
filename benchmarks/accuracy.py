"""Accuracy benchmark on real photos: the demo recipe trained and scored on public data sets.

    make bench-accuracy                                   # both data sets, 12 epochs each
    python -m benchmarks.accuracy --bccd-root ~/BCCD_Dataset --sets bccd

Not a timed test: it trains the ``demo`` preset's recipe (``training/presets.py``, from scratch) for ``--epochs`` on
each data set's train split, scores the last checkpoint on its held-out split with ``training.evaluate`` in
every runtime a CPU worker offers (``handler.cpu_runtime``: PyTorch float32 and bfloat16, ONNX Runtime), one
image per model call as a CPU worker runs them, and prints AP@0.5 per class, mAP@0.5 and COCO mAP@[.5:.95]
beside the figures recorded in README.md (section "Accuracy on real photos"), with this machine, and each other
runtime against float32 with its goal (mAP@0.5 within 0.01, every class within 0.02). On a CPU without native
bfloat16 its scoring is emulated: correct, but minutes instead of seconds. Run it whenever a preset, the
recipe, the data pipeline or the transforms change, and record the new figures in the README when they are
meant.

- bccd: BCCD (Shenggan/BCCD_Dataset, MIT licence), blood-cell microscopy, 640x480, classes Platelets (small
  objects, about 40 px), RBC and WBC; its own splits: train (205 images) and test (72). Downloaded at
  a pinned commit into ``--data-root`` on first use; ``--bccd-root`` takes an existing copy.
- raccoon: the raccoon photos in tests/data/raccoon (MIT licence), one class of large objects; without splits
  of its own, so the loaders' split by each file's content (identical files together) gives train 169 images,
  val 16 and test 15: trained on train, scored on test.
"""

from __future__ import annotations

import argparse
import re
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.bench import machine
from handler.checkpoint import CheckpointError
from handler.text import error_line
from project import RACCOON, README
from training import evaluate, train
from training.checkpoints import checkpoint_name
from training.datasets import DatasetError
from training.presets import DEMO

# The runtimes of a CPU worker (handler/precision.py), scored as training.evaluate's --runtime runs them.
RUNTIMES = ("float32", "bfloat16", "onnxruntime")

BCCD_COMMIT = "d272fb14cdff6e473fafeeeba32aba5f560e9e43"
BCCD_URL = f"https://github.com/Shenggan/BCCD_Dataset/archive/{BCCD_COMMIT}.tar.gz"
EPOCHS = 12
SETS = ("bccd", "raccoon")
MEANS = ("mAP@0.5", "mAP@[.5:.95]")  # the rows after the classes, named as format_metrics_table names them
# What another runtime may lose against float32 (AP@0.5): of mAP@0.5, and of any one class.
MAP_TOLERANCE, CLASS_TOLERANCE = 0.01, 0.02


class BenchmarkError(Exception):
    """A data set that is neither here nor downloadable, or a training that failed."""


@dataclass(frozen=True)
class BenchmarkSet:
    """A data set as the benchmark trains and scores it."""

    name: str
    data: Path  # what training.train's --data takes
    train_split: str
    test_split: str


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of: {', '.join(SETS)}")
    parser.add_argument("--data-root", default="data", help="where BCCD is downloaded to (data/bccd/...)")
    parser.add_argument("--bccd-root", default=None,
                        help="an existing copy of BCCD: a clone of Shenggan/BCCD_Dataset or its BCCD/ folder")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--output-dir", default="runs/accuracy", help="checkpoints go to OUTPUT_DIR/<set>")
    parser.add_argument("--readme", default=str(README), help="the file whose accuracy table is compared")
    parser.add_argument("-j", "--workers", type=int, default=1)
    parser.add_argument("--runtimes", default=",".join(RUNTIMES),
                        help=f"comma-separated, of: {', '.join(RUNTIMES)} (float32 is always scored)")
    parser.add_argument("--reuse-checkpoints", action="store_true",
                        help="score OUTPUT_DIR/<set>/Epoch.<epochs>.pth where it exists instead of training again")
    return parser


def bccd_folder(*, data_root: Path, bccd_root: str | None, url: str = BCCD_URL) -> Path:
    """The VOCdevkit folder of BCCD (Annotations/, JPEGImages/, ImageSets/), downloaded when it is not here.

    Raises:
        BenchmarkError: ``bccd_root`` holds no BCCD, or the download failed.
    """
    if bccd_root is not None:
        for folder in (Path(bccd_root) / "BCCD", Path(bccd_root)):
            if (folder / "ImageSets" / "Main" / "test.txt").is_file():
                return folder
        raise BenchmarkError(f"--bccd-root {bccd_root}: no BCCD/ImageSets/Main/test.txt nor ImageSets/Main/test.txt "
                             "(a clone of https://github.com/Shenggan/BCCD_Dataset)")
    folder = data_root / "bccd" / f"BCCD_Dataset-{BCCD_COMMIT}" / "BCCD"  # as GitHub's archive unpacks
    if (folder / "ImageSets" / "Main" / "test.txt").is_file():
        return folder
    archive = data_root / "bccd" / f"{BCCD_COMMIT}.tar.gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    try:
        if not archive.is_file():
            # Opens the URL before it shows a progress bar, so an offline machine fails here without output;
            # the file appears only when complete.
            torch.hub.download_url_to_file(url, str(archive), progress=True)
        with tarfile.open(archive) as tar:
            tar.extractall(archive.parent, filter="data")
    except (OSError, tarfile.TarError) as exc:
        raise BenchmarkError(f"cannot download BCCD from {url} ({error_line(exc)}): give an existing copy with "
                             f"--bccd-root PATH (a clone of Shenggan/BCCD_Dataset at {BCCD_COMMIT[:7]})") from None
    if not (folder / "ImageSets" / "Main" / "test.txt").is_file():
        raise BenchmarkError(f"{archive} unpacked without {folder}/ImageSets/Main/test.txt")
    return folder


def readme_figures(text: str) -> dict[str, dict[str, float]]:
    """The recorded figures: {set: {class or mean: value}} from the README's ``| set | row | value |`` rows."""
    figures: dict[str, dict[str, float]] = {}
    for name, row, value in re.findall(r"^\|\s*(\w+)\s*\|\s*([^|]+?)\s*\|\s*([01]\.\d+)\s*\|", text, flags=re.M):
        if name in SETS:
            figures.setdefault(name, {})[row] = float(value)
    return figures


def measured_figures(metrics: dict) -> dict[str, float]:
    """{class or mean: value} of ``training.evaluate``'s metrics, the README's row names."""
    rows = {name: ap for name, ap in metrics["per_class"].items() if ap is not None}
    return {**rows, MEANS[0]: metrics["map50"], MEANS[1]: metrics["map"]}


def comparison_table(name: str, measured: dict[str, float], recorded: dict[str, float]) -> list[str]:
    """Rows of one set: measured, recorded in the README, and the difference."""
    width = max(len(row) for row in [*measured, *recorded, "class"])
    lines = [f"{name}", f"  {'class':<{width}}  {'now':>6}  {'README':>6}  {'change':>6}"]
    for row in [*measured, *(r for r in recorded if r not in measured)]:
        now, before = measured.get(row), recorded.get(row)
        change = f"{now - before:+6.3f}" if now is not None and before is not None else f"{'':>6}"
        lines.append(f"  {row:<{width}}  {_figure(now)}  {_figure(before)}  {change}".rstrip())
    return lines


def _figure(value: float | None) -> str:
    return f"{'-':>6}" if value is None else f"{value:6.3f}"


def benchmark_sets(args: argparse.Namespace, names: list[str]) -> list[BenchmarkSet]:
    sets = []
    for name in names:
        if name == "bccd":
            folder = bccd_folder(data_root=Path(args.data_root), bccd_root=args.bccd_root)
            sets.append(BenchmarkSet(name="bccd", data=folder, train_split="train", test_split="test"))
        else:
            sets.append(BenchmarkSet(name="raccoon", data=RACCOON, train_split="train", test_split="test"))
    return sets


def runtime_table(measured: dict[str, dict[str, float]]) -> tuple[list[str], bool]:
    """Rows of each other runtime against float32 (``measured``: {runtime: figures}), and whether every
    one met the goal (mAP@0.5 within ``MAP_TOLERANCE``, each class within ``CLASS_TOLERANCE``)."""
    reference, met = measured["float32"], True
    reduced = [name for name in measured if name != "float32"]
    width = max(len(row) for row in [*reference, "class"])
    lines = [f"  {'class':<{width}}  {'float32':>8}" + "".join(f"  {name:>11}  {'change':>6}" for name in reduced)]
    for row, value in reference.items():
        line = f"  {row:<{width}}  {value:8.3f}"
        for name in reduced:
            change = measured[name][row] - value
            tolerance = None if row == MEANS[1] else MAP_TOLERANCE if row == MEANS[0] else CLASS_TOLERANCE
            within = tolerance is None or abs(change) <= tolerance
            met &= within
            line += f"  {measured[name][row]:11.3f}  {change:+6.3f}{'' if within else ' MISSED'}"
        lines.append(line)
    return lines, met


def run_set(benchmark: BenchmarkSet, args: argparse.Namespace, runtimes: list[str]) -> dict[str, dict]:
    """Trains the demo recipe on the set's train split (unless ``--reuse-checkpoints`` finds it trained);
    returns training.evaluate's metrics of its test split in each runtime, one image per model call."""
    output = Path(args.output_dir) / benchmark.name
    checkpoint = output / checkpoint_name(args.epochs)
    if not (args.reuse_checkpoints and checkpoint.is_file()):
        code = train.main(["--data", str(benchmark.data), "--train-split", benchmark.train_split, "--val-split", "",
                           "--output-dir", str(output), "--epochs", str(args.epochs), "--workers", str(args.workers),
                           "--no-progress", *DEMO.recipe])
        if code:
            raise BenchmarkError(f"training on {benchmark.name} failed (exit status {code})")
    return {runtime: evaluate.evaluate_checkpoint(evaluate.get_args_parser().parse_args(
        [str(checkpoint), str(benchmark.data), "--split", benchmark.test_split, "--workers", str(args.workers),
         "--device", "cpu", "--batch-size", "1", "--runtime", runtime])) for runtime in runtimes}


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    names = [name.strip() for name in args.sets.split(",") if name.strip()]
    runtimes = ["float32", *(r.strip() for r in args.runtimes.split(",") if r.strip() not in ("", "float32"))]
    for option, chosen, known in (("--sets", names, SETS), ("--runtimes", runtimes, RUNTIMES)):
        unknown = sorted(set(chosen) - set(known))
        if unknown:
            print(f"error: {option}: unknown {', '.join(unknown)}; choose from {', '.join(known)}", file=sys.stderr)
            return 2
    try:
        sets = benchmark_sets(args, names)
        recorded = readme_figures(Path(args.readme).read_text())
        lines, goals_met = [], True
        for benchmark in sets:
            started = time.perf_counter()
            metrics = run_set(benchmark, args, runtimes)
            minutes = (time.perf_counter() - started) / 60
            figures = {runtime: measured_figures(m) for runtime, m in metrics.items()}
            lines += comparison_table(
                f"{benchmark.name}: {metrics['float32']['images']} {benchmark.test_split} images, trained "
                f"{args.epochs} epochs on {benchmark.train_split}, scored in {len(runtimes)} runtime(s), "
                f"{minutes:.1f} min in all", figures["float32"], recorded.get(benchmark.name, {}))
            if len(runtimes) > 1:
                rows, met = runtime_table(figures)
                goals_met &= met
                lines += [f"  against float32 (goal: mAP@0.5 within {MAP_TOLERANCE}, each class within "
                          f"{CLASS_TOLERANCE}): {'met' if met else 'MISSED'}", *rows]
    except (BenchmarkError, DatasetError, CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"accuracy of the demo recipe ({' '.join(DEMO.recipe)}) on {machine()}; README: the figures recorded "
          f"in {args.readme}")
    print("\n".join(lines))
    return 0 if goals_met else 3


if __name__ == "__main__":
    sys.exit(main())
