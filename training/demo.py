"""Builds the demo model on this machine and measures it: generated data -> demo preset -> test mAP.

    python -m training.demo --data data/synthetic --output-dir model

Generates the synthetic data set when it is missing, trains the small ``demo`` preset (not the seed's
model: a CPU-sized network) with the recipe below, scores the last checkpoint on the held-out test split and
prints the training time and mAP. ``make demo-model`` (and so ``make serve`` on a fresh clone) runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from handler.checkpoint import checkpoint_name
from training import evaluate, train
from training.synthetic import write_dataset

# SGD at 40x the seed's LR, with warm-up and batches of 8: a small network trained from scratch
# learns fast enough to be useful on a 2-core CPU in 10 minutes.
DEMO_RECIPE = ["--backbone", "demo", "--batch-size", "8", "--lr", "0.04", "--warmup-iters", "50"]
DEMO_SPLITS = {"train": 1400, "val": 100, "test": 100}
DEMO_EPOCHS = 4
TARGET_MAP50, TARGET_MINUTES = 0.8, 10.0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--output-dir", default="model")
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    parser.add_argument("-j", "--workers", type=int, default=1)
    parser.add_argument("--metrics", default=None, help="JSON file for the numbers (default OUTPUT_DIR/demo.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    data = Path(args.data)
    if not (data / "ImageSets" / "Main" / "test.txt").is_file():
        print(f"generating the synthetic data set in {data}")
        write_dataset(data, counts=DEMO_SPLITS, seed=0, progress=print)
    started = time.perf_counter()
    code = train.main(["--data", str(data), "--output-dir", args.output_dir, "--epochs", str(args.epochs),
                       "--workers", str(args.workers), *DEMO_RECIPE])
    if code:
        return code
    train_minutes = (time.perf_counter() - started) / 60
    checkpoint = Path(args.output_dir) / checkpoint_name(args.epochs)
    metrics_path = Path(args.metrics or Path(args.output_dir) / "demo.json")
    code = evaluate.main([str(checkpoint), str(data), "--split", "test", "--output", str(metrics_path),
                          "--workers", str(args.workers)])
    if code:
        return code
    metrics = json.loads(metrics_path.read_text())
    reached = metrics["map50"] >= TARGET_MAP50 and train_minutes <= TARGET_MINUTES
    metrics.update(train_minutes=train_minutes, epochs=args.epochs, recipe=DEMO_RECIPE)
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"demo model: {checkpoint}, trained in {train_minutes:.1f} min, test mAP@0.5 {metrics['map50']:.3f} "
          f"on {metrics['images']} held-out images (goal: >= {TARGET_MAP50} within {TARGET_MINUTES:.0f} min: "
          f"{'reached' if reached else 'NOT reached'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
