"""Scores a checkpoint on a data set: AP@0.5 per class, mAP@0.5 and COCO mAP@[.5:.95].

    python -m training.evaluate model/Epoch.20.pth data/synthetic --split test --output metrics.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from handler.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from handler.onnx_runtime import OnnxDetector
from handler.precision import reduced_precision
from training.batching import collate_as_lists
from training.datasets import DatasetError, open_dataset
from training.engine import evaluate, format_metrics_table

# How the model runs (handler.cpu_runtime and handler.half_precision): PyTorch under autocast to this type (None:
# float32), or ONNX Runtime in float32.
RUNTIMES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16, "onnxruntime": None}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="an Epoch.N.pth written by training.train")
    parser.add_argument("data", help="data set folder (Pascal VOC, COCO or YOLO; see training/layouts.py), COCO .json "
                                      "or YOLO data.yaml, as training's --data")
    parser.add_argument("--split", default="test", help="the split scored: the data's own, or for data without "
                                                        "splits about 10%% of its images, kept out of train and val")
    parser.add_argument("--output", default=None, help="JSON file for the metrics (default: print only)")
    parser.add_argument("-b", "--batch-size", type=int, default=4)
    parser.add_argument("-j", "--workers", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--runtime", default="float32", choices=list(RUNTIMES),
                        help="the model as a worker runs it: PyTorch in float32, bfloat16 autocast "
                             "(handler.cpu_runtime; emulated, correct but many times slower, on a CPU without "
                             "native bfloat16), float16 autocast (handler.half_precision, CUDA only), or ONNX "
                             "Runtime in float32 (CPU only)")
    return parser


def evaluate_checkpoint(args: argparse.Namespace) -> dict:
    state = load_checkpoint(args.checkpoint)
    dataset = open_dataset(args.data, args.split, class_names=state["class_names"], include_difficult=True)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers,
                        collate_fn=collate_as_lists)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.runtime == "float16" and device.type != "cuda":
        raise ValueError(f"--runtime float16 runs on CUDA only, not on {device}")
    if args.runtime == "onnxruntime" and device.type != "cpu":
        raise ValueError(f"--runtime onnxruntime runs on the CPU only, not on {device}")
    model = model_from_checkpoint(state).to(device)
    if args.runtime == "onnxruntime":
        model = OnnxDetector(model.eval())
    with reduced_precision(device.type, RUNTIMES[args.runtime]):
        metrics = evaluate(model, loader, device, state["class_names"], show_progress=True)
    metrics.update(checkpoint=str(args.checkpoint), data=str(args.data), split=args.split, images=len(dataset),
                   runtime=args.runtime)
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        metrics = evaluate_checkpoint(args)
    except (CheckpointError, DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_metrics_table(metrics))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
