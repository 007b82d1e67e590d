"""One training epoch and the mAP evaluation, shared by the training and evaluation CLIs."""

from __future__ import annotations

import contextlib
import io
import math
from typing import Iterable, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm


class NonFiniteLossError(RuntimeError):
    """Training diverged: a loss became NaN or infinite."""


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: Iterable,
    device: torch.device,
    epoch: int,
    *,
    warmup_iters: int = 0,
    scaler: torch.amp.GradScaler | None = None,
    max_steps: int | None = None,
    show_progress: bool = True,
) -> dict[str, float]:
    """Trains one pass over ``data_loader`` and returns the mean of each loss and the last LR.

    Args:
        warmup_iters: linear LR warm-up over the first iterations of this epoch (0: none).
        scaler: a GradScaler turns on mixed precision (CUDA only).
        max_steps: stop this epoch early after so many steps (for time-boxed runs).
    Raises:
        NonFiniteLossError: when the total loss is NaN or infinite.
    """
    model.train()
    warmup = None
    if warmup_iters > 0:
        steps_this_epoch = min(max_steps or len(data_loader), len(data_loader))
        warmup = torch.optim.lr_scheduler.LinearLR(
            optimizer, start_factor=1.0 / 1000, total_iters=max(1, min(warmup_iters, steps_this_epoch - 1))
        )
    sums: dict[str, float] = {}
    steps = 0
    bar = tqdm(data_loader, desc=f"epoch {epoch}", disable=not show_progress, dynamic_ncols=True)
    for step, (images, targets) in enumerate(bar):
        if max_steps is not None and step >= max_steps:
            break
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, enabled=scaler is not None):
            loss_dict = model(images, targets)
            loss = sum(loss_dict.values())
        if not math.isfinite(loss.item()):
            raise NonFiniteLossError(
                f"loss became {loss.item()} at epoch {epoch} step {step} "
                f"({', '.join(f'{k}={v.item():.4g}' for k, v in loss_dict.items())}); "
                "lower --lr or add --warmup-iters"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if warmup is not None and step < warmup.total_iters:
            warmup.step()
        steps += 1
        for key, value in {"loss": loss, **loss_dict}.items():
            sums[key] = sums.get(key, 0.0) + value.item()
        bar.set_postfix(loss=f"{sums['loss'] / steps:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    means = {key: total / max(steps, 1) for key, total in sums.items()}
    means["lr"] = optimizer.param_groups[0]["lr"]
    means["steps"] = steps
    return means


@torch.inference_mode()
def predict(model: torch.nn.Module, data_loader: Iterable, device: torch.device,
            show_progress: bool = False) -> tuple[list[dict], list[dict]]:
    """Runs the model in eval mode over a loader; returns (targets, predictions) on the CPU."""
    model.eval()
    all_targets, all_predictions = [], []
    for images, targets in tqdm(data_loader, desc="evaluate", disable=not show_progress, dynamic_ncols=True):
        outputs = model([image.to(device) for image in images])
        all_targets += targets
        all_predictions += [{k: v.cpu() for k, v in output.items()} for output in outputs]
    return all_targets, all_predictions


def coco_map(targets: Sequence[dict], predictions: Sequence[dict], class_names: Sequence[str]) -> dict:
    """mAP@0.5 per class and COCO mAP@[.5:.95] with pycocotools.

    Difficult objects become COCO "crowd" regions: a detection on them is neither a hit nor a miss.
    Returns ``{"map50", "map", "per_class": {name: AP@0.5 or None when the class has no objects}}``.
    """
    images, annotations, detections = [], [], []
    for image_id, (target, prediction) in enumerate(zip(targets, predictions), start=1):
        images.append({"id": image_id})
        difficult = target.get("difficult", torch.zeros(len(target["labels"]), dtype=torch.bool))
        for box, label, hard in zip(target["boxes"].tolist(), target["labels"].tolist(), difficult.tolist()):
            x1, y1, x2, y2 = box
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": int(hard),
            })
        for box, label, score in zip(prediction["boxes"].tolist(), prediction["labels"].tolist(),
                                     prediction["scores"].tolist()):
            x1, y1, x2, y2 = box
            detections.append({"image_id": image_id, "category_id": int(label),
                               "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    ground_truth = COCO()
    ground_truth.dataset = {"info": {}, "images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress unconditionally
        ground_truth.createIndex()
        if not detections:
            return {"map50": 0.0, "map": 0.0, "per_class": _per_class(None, annotations, class_names)}
        results = ground_truth.loadRes(detections)
        evaluator = COCOeval(ground_truth, results, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    per_class = _per_class(evaluator.eval["precision"], annotations, class_names)
    present = [ap for ap in per_class.values() if ap is not None]
    return {
        "map50": float(np.mean(present)) if present else 0.0,
        "map": max(float(evaluator.stats[0]), 0.0),
        "per_class": per_class,
    }


def _per_class(precision: np.ndarray | None, annotations: list[dict], class_names: Sequence[str]) -> dict:
    """AP@0.5 of each class: precision[iou=0.5, all recalls, class, area=all, maxDets=100]."""
    counted = {a["category_id"] for a in annotations if not a["iscrowd"]}
    per_class: dict[str, float | None] = {}
    for k, name in enumerate(class_names):
        if k + 1 not in counted:
            per_class[name] = None
        elif precision is None:
            per_class[name] = 0.0
        else:
            curve = precision[0, :, k, 0, -1]
            per_class[name] = float(curve[curve > -1].mean()) if (curve > -1).any() else 0.0
    return per_class


def evaluate(model: torch.nn.Module, data_loader: Iterable, device: torch.device, class_names: Sequence[str],
             show_progress: bool = False) -> dict:
    """Predicts over the loader and scores the predictions (see ``coco_map``)."""
    targets, predictions = predict(model, data_loader, device, show_progress)
    return coco_map(targets, predictions, class_names)


def format_metrics_table(metrics: dict) -> str:
    """A printable table of AP@0.5 per class, then the two means."""
    width = max([len(name) for name in metrics["per_class"]] + [len("mAP@[.5:.95]")])
    lines = [f"{'class':<{width}}  AP@0.5"]
    for name, ap in metrics["per_class"].items():
        lines.append(f"{name:<{width}}  {'n/a (no objects)' if ap is None else f'{ap:.3f}'}")
    lines.append(f"{'mAP@0.5':<{width}}  {metrics['map50']:.3f}")
    lines.append(f"{'mAP@[.5:.95]':<{width}}  {metrics['map']:.3f}")
    return "\n".join(lines)
