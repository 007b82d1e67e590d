"""Builds the demo model on this machine and measures it: generated data -> demo preset -> test mAP.

    python -m training.demo --data data/synthetic --output-dir model

Generates the synthetic data set (images of varied sizes) when it is missing, trains the small ``demo``
preset (not the seed's model: a CPU-sized network) with its recipe (``training/presets.py``), and writes the
serving copy of the last checkpoint to ``model/demo.pth`` (float16 weights, no optimizer state): the default
model that ``make serve`` packs when ``model/`` holds no ``Epoch.N.pth``. It then scores that copy on the held-out
test split and measures its tag recall on scenes of three sizes. ``make demo-model`` runs it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from torchvision.transforms.functional import pil_to_tensor

from handler.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from handler.settings import ServingSettings
from project import SHIPPED_CHECKPOINT
from training import evaluate, train
from training.checkpoints import checkpoint_name, save_serving_checkpoint
from training.datasets import DatasetError
from training.engine import format_metrics_table
from training.presets import DEMO
from training.synthetic import render_image, write_dataset

DEMO_SPLITS = {"train": 1400, "val": 100, "test": 100}
DEMO_EPOCHS = 5
# Scene sizes whose tag recall is compared: the model must answer alike on small and large photos.
RECALL_SIZES = ((320, 320), (480, 480), (640, 480))
RECALL_SCENES = 100


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--output-dir", default="model")
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    parser.add_argument("-j", "--workers", type=int, default=1)
    parser.add_argument("--shipped", default=str(SHIPPED_CHECKPOINT),
                        help="where the serving copy (float16, no optimizer) of the last checkpoint goes")
    parser.add_argument("--metrics", default=None, help="JSON file for the numbers (default OUTPUT_DIR/demo.json)")
    return parser


@torch.inference_mode()
def tag_recall(model: torch.nn.Module, width: int, height: int, *, scenes: int = RECALL_SCENES,
               threshold: float = ServingSettings.score_threshold, seed: int = 7000) -> float:
    """Share of the distinct classes in generated ``width`` x ``height`` scenes that come back as tags (at the
    served score threshold unless told)."""
    model.eval()
    rng = random.Random(f"recall-{seed}-{width}x{height}")
    found = wanted = 0
    for _ in range(scenes):
        image, objects = render_image(rng, width=width, height=height)
        (output,) = model([pil_to_tensor(image).float() / 255])
        tags = set((output["labels"][output["scores"] >= threshold] - 1).tolist())
        truth = {label for label, _ in objects}
        found, wanted = found + len(truth & tags), wanted + len(truth)
    return found / wanted


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    data = Path(args.data)
    if not (data / "ImageSets" / "Main" / "test.txt").is_file():
        print(f"generating the synthetic data set in {data}")
        write_dataset(data, counts=DEMO_SPLITS, seed=0, progress=print)
    started = time.perf_counter()
    code = train.main(["--data", str(data), "--output-dir", args.output_dir, "--epochs", str(args.epochs),
                       "--workers", str(args.workers), *DEMO.recipe])
    if code:
        return code
    train_minutes = (time.perf_counter() - started) / 60
    shipped = save_serving_checkpoint(Path(args.output_dir) / checkpoint_name(args.epochs), args.shipped,
                                      float16=True)
    metrics_path = Path(args.metrics or Path(args.output_dir) / "demo.json")
    try:
        metrics = evaluate.evaluate_checkpoint(evaluate.get_args_parser().parse_args(
            [str(shipped), str(data), "--split", "test", "--workers", str(args.workers)]))
    except (CheckpointError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    model = model_from_checkpoint(load_checkpoint(shipped))
    recall = {f"{w}x{h}": tag_recall(model, w, h) for w, h in RECALL_SIZES}
    metrics.update(train_minutes=train_minutes, epochs=args.epochs, recipe=DEMO.recipe, tag_recall=recall,
                   shipped_bytes=shipped.stat().st_size)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    print(format_metrics_table(metrics))
    print(f"demo model: {shipped} ({shipped.stat().st_size / 1e6:.1f} MB), trained in {train_minutes:.1f} min, "
          f"test mAP@0.5 {metrics['map50']:.3f} on {metrics['images']} held-out images; tag recall "
          + ", ".join(f"{size} {value:.3f}" for size, value in recall.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
