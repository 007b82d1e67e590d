"""One training epoch and the mAP evaluation, shared by the training and evaluation CLIs."""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from handler.text import error_line
from training import distributed, mixed_precision
from training.batching import Batch
from training.datasets import DatasetWarning, UnreadableImage
from training.distributed import StepFailedError, StepState


class NonFiniteLossError(RuntimeError):
    """Training diverged: a loss became NaN or infinite (on every process: losses are averaged first)."""


@dataclass
class EpochResult:
    """What one training epoch did (averaged over the processes under DDP)."""

    losses: dict[str, float]  # the mean of each loss (and their sum, "loss") over the steps and the processes
    lr: float  # the LR of the last step
    steps: int  # steps trained (a step whose images were all unreadable is skipped)
    unreadable_images: list[str]  # "path (reason)" of each image left out; rank 0 has every process's


def train_one_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data_loader: Iterable,
                    device: torch.device, epoch: int, *, warmup_iters: int = 0,
                    scaler: torch.amp.GradScaler | None = None, max_steps: int | None = None,
                    show_progress: bool = True,
                    on_step: Callable[[int, dict[str, float], float], None] | None = None) -> EpochResult:
    """Trains one pass over ``data_loader`` (batches from ``batching.collate_as_lists``).

    Under DDP the processes agree before and after each forward pass (``distributed.agree``), so they
    train, skip or stop the same steps together; see ``training/distributed.py``.

    Args:
        warmup_iters: linear LR warm-up over the first iterations of this epoch (0: none).
        scaler: a GradScaler turns on mixed precision (``mixed_precision.grad_scaler``: CUDA only).
        max_steps: stop this epoch early after so many steps (for time-boxed runs).
        on_step: called after each trained step with (step, its losses averaged over the processes, its LR),
            e.g. to write training curves.
    Raises:
        NonFiniteLossError: when the total loss, averaged over the processes, is NaN or infinite.
        StepFailedError: when loading a batch or the forward pass raised on any process.
    """
    model.train()
    steps_this_epoch = steps_per_epoch(data_loader, max_steps)
    warmup = _warmup_schedule(optimizer, warmup_iters, steps_this_epoch)
    totals = _LossTotals()
    unreadable: list[UnreadableImage] = []
    batches = iter(data_loader)
    bar = tqdm(total=steps_this_epoch, desc=f"epoch {epoch}", disable=not show_progress, dynamic_ncols=True)
    for step in range(steps_this_epoch):
        agreed, batch = _next_batch(batches, unreadable, epoch=epoch, step=step)
        if agreed is StepState.DONE:
            break
        bar.update(1)
        if agreed is StepState.EMPTY:
            continue
        loss_dict = _forward(model, batch, device, scaler, epoch=epoch, step=step)
        step_losses = _averaged_losses(loss_dict, epoch=epoch, step=step)
        mixed_precision.backward_and_step(sum(loss_dict.values()), optimizer, scaler)
        step_lr = optimizer.param_groups[0]["lr"]
        if warmup is not None and step < warmup.total_iters:
            warmup.step()
        totals.add(step_losses)
        if on_step is not None:
            on_step(step, step_losses, step_lr)
        bar.set_postfix(loss=f"{totals.mean('loss'):.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    bar.close()
    # Each process skipped its own images; rank 0 logs them all.
    every_unreadable = distributed.gather_to_main([str(image) for image in unreadable])
    return EpochResult(losses=totals.means(), lr=optimizer.param_groups[0]["lr"], steps=totals.steps,
                       unreadable_images=every_unreadable)


def steps_per_epoch(data_loader: Iterable, max_steps: int | None) -> int:
    """The steps an epoch trains: every batch of ``data_loader``, or ``max_steps`` when that is fewer."""
    return min(max_steps or len(data_loader), len(data_loader))


def _warmup_schedule(optimizer: torch.optim.Optimizer, warmup_iters: int,
                     steps_this_epoch: int) -> torch.optim.lr_scheduler.LinearLR | None:
    """A linear LR warm-up from 1/1000 of the LR over ``warmup_iters`` steps of this epoch; None for none."""
    if warmup_iters <= 0:
        return None
    return torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1.0 / 1000, total_iters=max(1, min(warmup_iters, steps_this_epoch - 1)))


@dataclass
class _LossTotals:
    """The sum of each step's losses over the steps trained, for their means."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0

    def add(self, losses: dict[str, float]) -> None:
        self.steps += 1
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def mean(self, key: str) -> float:
        return self.sums[key] / max(self.steps, 1)

    def means(self) -> dict[str, float]:
        return {key: self.mean(key) for key in self.sums}


def _next_batch(batches: Iterator[Batch], unreadable: list[UnreadableImage], *, epoch: int,
                step: int) -> tuple[StepState, Batch | None]:
    """The next batch and what every process agreed to do at this step: train (READY), skip it (EMPTY: a
    process has no readable image) or end the epoch (DONE: a loader has no batch left).

    The batch's unreadable images are warned of and added to ``unreadable``.

    Raises:
        StepFailedError: on every process, when loading a batch raised on one.
    """
    batch, error, state = None, None, StepState.READY
    try:
        batch = next(batches)
    except StopIteration:
        state = StepState.DONE
    except Exception as exc:  # a loader worker died, a transform raised, ...
        state, error = StepState.FAILED, exc
    if batch is not None:
        for image in batch.unreadable:
            unreadable.append(image)
            warnings.warn(f"skipped unreadable image {image} ({len(unreadable)} this epoch)", DatasetWarning)
        if not batch.images:
            state = StepState.EMPTY
    return _agree_or_stop(state, error, epoch=epoch, step=step), batch


def _forward(model: torch.nn.Module, batch: Batch, device: torch.device, scaler: torch.amp.GradScaler | None,
             *, epoch: int, step: int) -> dict[str, torch.Tensor]:
    """The losses of the batch's forward pass, once every process's forward pass has succeeded.

    Raises:
        StepFailedError: on every process, when the forward pass raised on one.
    """
    loss_dict, error = None, None
    try:
        images = [image.to(device, non_blocking=True) for image in batch.images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in batch.targets]
        with mixed_precision.autocast(device, scaler):
            loss_dict = model(images, targets)
    except Exception as exc:  # out of memory, a bad box, ...
        error = exc
    _agree_or_stop(StepState.FAILED if error else StepState.READY, error, epoch=epoch, step=step)
    return loss_dict


def _averaged_losses(loss_dict: dict[str, torch.Tensor], *, epoch: int, step: int) -> dict[str, float]:
    """Their sum ("loss") and each loss, averaged over the processes.

    Raises:
        NonFiniteLossError: on every process, when the averaged sum is NaN or infinite.
    """
    reduced = distributed.reduce_dict(loss_dict)
    total = sum(reduced.values()).item()
    if not math.isfinite(total):
        raise NonFiniteLossError(
            f"loss became {total} at epoch {epoch} step {step} "
            f"({', '.join(f'{k}={v.item():.4g}' for k, v in reduced.items())}); "
            "lower --lr or add --warmup-iters"
        )
    return {"loss": total, **{k: v.item() for k, v in reduced.items()}}


def _agree_or_stop(state: StepState, error: Exception | None, *, epoch: int, step: int) -> StepState:
    """``distributed.agree`` on this process's state; raises StepFailedError on every process when one failed."""
    agreed = distributed.agree(state, None if error is None else error_line(error, with_type=True))
    if agreed.state is StepState.FAILED:
        world = distributed.get_world_size()
        who = f"rank {agreed.failed_rank} of {world} failed" if world > 1 else "training failed"
        raise StepFailedError(f"{who} at epoch {epoch} step {step}: {agreed.message}") from error
    return agreed.state


@dataclass
class Predictions:
    """The model's answers over a loader, on the CPU, with the images that could not be read."""

    targets: list[dict]
    predictions: list[dict]
    unreadable_images: list[str]


@torch.inference_mode()
def predict(model: torch.nn.Module, data_loader: Iterable, device: torch.device,
            show_progress: bool = False) -> Predictions:
    """Runs the model in eval mode over a loader (batches from ``batching.collate_as_lists``)."""
    model.eval()
    found = Predictions(targets=[], predictions=[], unreadable_images=[])
    for batch in tqdm(data_loader, desc="evaluate", disable=not show_progress, dynamic_ncols=True):
        for image in batch.unreadable:
            found.unreadable_images.append(str(image))
            warnings.warn(f"left out unreadable image {image} ({len(found.unreadable_images)} so far)",
                          DatasetWarning)
        if not batch.images:
            continue
        outputs = model([image.to(device) for image in batch.images])
        found.targets += batch.targets
        found.predictions += [{k: v.cpu() for k, v in output.items()} for output in outputs]
    return found


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
             show_progress: bool = False) -> dict | None:
    """Predicts over the loader and scores the predictions (see ``coco_map``), listing unreadable images.

    Under DDP each process predicts the images of its own loader (its share of the set, no collective per
    batch) and rank 0 scores them all; the other processes return None.
    """
    distributed.broadcast_buffers(model)
    shares = distributed.gather_to_main([predict(model, data_loader, device, show_progress)])
    if not distributed.is_main_process():
        return None
    metrics = coco_map([t for share in shares for t in share.targets],
                       [p for share in shares for p in share.predictions], class_names)
    metrics["unreadable_images"] = [name for share in shares for name in share.unreadable_images]
    return metrics


def format_metrics_table(metrics: dict) -> str:
    """A printable table of AP@0.5 per class, then the two means."""
    width = max([len(name) for name in metrics["per_class"]] + [len("mAP@[.5:.95]")])
    lines = [f"{'class':<{width}}  AP@0.5"]
    for name, ap in metrics["per_class"].items():
        lines.append(f"{name:<{width}}  {'n/a (no objects)' if ap is None else f'{ap:.3f}'}")
    lines.append(f"{'mAP@0.5':<{width}}  {metrics['map50']:.3f}")
    lines.append(f"{'mAP@[.5:.95]':<{width}}  {metrics['map']:.3f}")
    return "\n".join(lines)
