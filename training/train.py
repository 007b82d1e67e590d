"""Trains the tagger's Faster R-CNN and writes ``Epoch.N.pth`` after every epoch.

    python -m training.train --data data/synthetic --backbone vgg16 --epochs 20 --output-dir model
    torchrun --nproc_per_node 4 -m training.train --data /data/VOCdevkit/VOC2007 --backbone resnet50 ...

Seed defaults: SGD(lr=0.001, momentum=0.9, weight_decay=0.0005), CosineAnnealingLR(T_max=epochs,
eta_min=1e-5). Each epoch ends with mAP on the validation split, logged to ``OUTPUT_DIR/log.jsonl`` with the
images that failed to decode and were skipped. ``--resume`` takes any checkpoint this project wrote, also a
serving copy without optimizer state; the schedule always ends at ``--eta-min`` at ``--epochs``. Under DDP
the processes fail together (see ``training/distributed.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler

from common.model_archive import MANIFEST, ArchiveReadError, extract_serialized_file, member_names
from handler.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from handler.detector import build_detector_from_config
from handler.settings import ServingSettings
from handler.text import error_line
from training.augmentation import train_transforms
from training.backbones import backbone_start_state, default_backbone_weights
from training.batching import GroupedBatchSampler, aspect_ratio_groups, collate_as_lists
from training.checkpoints import checkpoint_name, epoch_checkpoints, save_checkpoint
from training.datasets import DatasetError, DetectionDataset, open_dataset
from training.distributed import (StepFailedError, barrier, get_rank, get_world_size, init_distributed,
                                  is_main_process)
from training.engine import NonFiniteLossError, evaluate, format_metrics_table, steps_per_epoch, train_one_epoch
from training.events import TrainingCurves
from training.layouts import FORMATS
from training.mixed_precision import grad_scaler
from training.options import TRAIN_SPLIT, VAL_SPLIT, parse_class_names, parse_overrides
from training.presets import DEFAULT_PRESET, PRESETS, model_config

UNREADABLE_SHOWN = 10  # unreadable images named in the closing summary (log.jsonl names all)


class ResumeWarning(UserWarning):
    """A checkpoint resumed from without part of the training state (e.g. a serving copy)."""


@dataclass
class Loaders:
    """The training set and this process's loaders (under DDP its share of the images)."""

    train_set: DetectionDataset
    sampler: Sampler[int]  # reshuffled each epoch under DDP (set_epoch)
    train: DataLoader
    val: DataLoader | None  # None without --val-split


@dataclass
class Run:
    """What every epoch of a training run works with."""

    args: argparse.Namespace
    device: torch.device
    world: int  # processes
    loaders: Loaders
    model: torch.nn.Module  # wrapped in DistributedDataParallel under DDP: the one trained
    model_without_ddp: torch.nn.Module  # the one evaluated and saved
    config: dict
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.CosineAnnealingLR
    scaler: torch.amp.GradScaler | None
    main: bool  # rank 0: writes the checkpoints, log.jsonl and curves
    curves: TrainingCurves | None = None  # rank 0's

    @property
    def class_names(self) -> list[str]:
        return self.loaders.train_set.class_names

    @property
    def output_dir(self) -> Path:
        return Path(self.args.output_dir)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True,
                        help="data set folder (Pascal VOC, COCO or YOLO; see training/layouts.py), COCO .json "
                             "or YOLO data.yaml")
    parser.add_argument("--format", default=None, choices=FORMATS,
                        help="the data set's format when the guess from its files is wrong")
    parser.add_argument("--train-split", default=TRAIN_SPLIT)
    parser.add_argument("--val-split", default=VAL_SPLIT, help="split evaluated after each epoch ('' to skip)")
    parser.add_argument("--classes", default=None, help="comma-separated class names: fixes their order")
    parser.add_argument("--backbone", default=DEFAULT_PRESET, help=f"one of {', '.join(PRESETS)}")
    parser.add_argument("--backbone-weights", default=None, metavar="imagenet|PATH|none",
                        help="what the backbone starts from: torchvision's ImageNet weights (from the torch "
                             "cache, downloaded when missing), a torchvision state dict file, or random weights "
                             "(default: imagenet for vgg16 and resnet50, none for demo)")
    parser.add_argument("--model-override", action="append", default=[], metavar="KEY=VALUE",
                        help="change one model setting, e.g. min_size=600 (JSON values); repeatable")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("-b", "--batch-size", type=int, default=2, help="images per process")
    parser.add_argument("-j", "--workers", type=int, default=2, help="data loading workers per process")
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=0.0005)
    parser.add_argument("--eta-min", type=float, default=0.00001, help="CosineAnnealingLR's final LR")
    parser.add_argument("--warmup-iters", type=int, default=0, help="linear LR warm-up in the first epoch")
    parser.add_argument("--hflip-prob", type=float, default=0.5)
    parser.add_argument("--no-aspect-ratio-group", dest="aspect_ratio_group", action="store_false",
                        help="do not batch landscape and portrait images apart")
    parser.add_argument("--max-steps-per-epoch", type=int, default=None)
    parser.add_argument("--output-dir", default="model", help="where Epoch.N.pth and log.jsonl go")
    parser.add_argument("--keep-last", type=int, default=None, metavar="N",
                        help="after each Epoch.N.pth is written, delete the older ones of --output-dir but the "
                             "newest N (default: keep all)")
    parser.add_argument("--resume", default=None,
                        help="Epoch.N.pth, a serving copy or a .mar to continue from (at epoch N+1)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="no mixed precision on CUDA")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels-last weights on CUDA (faster convolutions with mixed precision on tensor "
                             "cores; benchmarks/gpu_check.py times both); ignored on the CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    return parser


def build_new_detector(preset: str, num_classes: int, weights: str, overrides: dict[str, Any]):
    """A new model of ``preset`` whose backbone starts from ``weights`` (see ``training/backbones.py``); returns
    (model, config). The config records whether the backbone started from pretrained weights (``backbone_norm``).
    """
    config = model_config(preset, num_classes, pretrained=weights != "none", **overrides)  # wrong settings said first
    backbone = config["backbone"]
    start_state = backbone_start_state(backbone, weights)
    model = build_detector_from_config(config)
    if start_state is not None:
        try:
            model.backbone.load_state_dict(start_state)
        except RuntimeError as exc:  # keys or shapes of another network
            raise ValueError(f"cannot load {weights} into the {backbone} backbone: {error_line(exc)}") from None
    return model, config


def build_loaders(args: argparse.Namespace, class_names: list[str] | None, distributed: bool) -> Loaders:
    """The training set and this process's loaders; ``class_names`` fixes the labels (None: from the data)."""
    train_set = open_dataset(args.data, args.train_split, format=args.format, class_names=class_names,
                             transforms=train_transforms(hflip_prob=args.hflip_prob))
    sampler = DistributedSampler(train_set, seed=args.seed) if distributed else RandomSampler(train_set)
    if args.aspect_ratio_group:
        groups = aspect_ratio_groups([train_set.image_size(i) for i in range(len(train_set))])
        batch_sampler = GroupedBatchSampler(sampler, groups, args.batch_size)
    else:
        batch_sampler = torch.utils.data.BatchSampler(sampler, args.batch_size, drop_last=False)
    train_loader = DataLoader(train_set, batch_sampler=batch_sampler, num_workers=args.workers,
                              collate_fn=collate_as_lists, persistent_workers=args.workers > 0)
    val_loader = None
    if args.val_split:
        val_set = open_dataset(args.data, args.val_split, format=args.format, class_names=train_set.class_names,
                               include_difficult=True)
        # Each process evaluates its own share of the images (every world-th one, none twice).
        val_loader = DataLoader(val_set, batch_size=args.batch_size,
                                sampler=range(get_rank(), len(val_set), get_world_size()),
                                num_workers=args.workers, collate_fn=collate_as_lists)
    return Loaders(train_set=train_set, sampler=sampler, train=train_loader, val=val_loader)


def read_resume_checkpoint(path: str) -> dict:
    """A checkpoint file, or the checkpoint packed in a TorchServe model archive (``make archive``'s .mar).

    Raises:
        CheckpointError: not a checkpoint of this project, nor an archive holding one.
    """
    # A torch file is a zip too, but without the archive's manifest.
    if zipfile.is_zipfile(path) and MANIFEST in member_names(Path(path)):
        with tempfile.TemporaryDirectory() as folder:
            try:
                return load_checkpoint(extract_serialized_file(Path(path), Path(folder)))
            except ArchiveReadError as exc:
                raise CheckpointError(str(exc)) from None
    return load_checkpoint(path)


def checkpoint_size_line(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, epochs: int,
                         keep_last: int | None) -> str:
    """The disk each Epoch.N.pth will take, estimated before any is written: the model's state dict plus SGD's
    momentum buffer (one per trainable parameter, same size); the zip container adds a few kB. With
    ``--keep-last N`` the peak is N+1 checkpoints: each new one is complete before the oldest is deleted.

    Args:
        epochs: the epochs this run writes.
        keep_last: ``--keep-last``; None keeps all.
    """
    weights = sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())
    momentum = sum(parameter.numel() * parameter.element_size() for group in optimizer.param_groups
                   if group.get("momentum") for parameter in group["params"])
    each = weights + momentum
    kept = (f"a new one is written before the oldest is deleted, so {keep_last + 1} are on disk at the peak; "
            f"--keep-last {keep_last} keeps the newest {keep_last}: at most {_disk_size((keep_last + 1) * each)}"
            if keep_last is not None else
            f"{epochs} epoch{'s' if epochs != 1 else ''} write {_disk_size(epochs * each)} (--keep-last N keeps "
            "the newest N)")
    return (f"each checkpoint takes about {_disk_size(each)} (estimated: weights {_disk_size(weights)} + SGD "
            f"momentum {_disk_size(momentum)}); {kept}")


def _disk_size(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def remove_older_checkpoints(folder: Path, *, written: int, keep_last: int) -> list[Path]:
    """Deletes ``Epoch.M.pth`` files with M < ``written`` so that the newest ``keep_last`` remain, the one just
    written among them; files numbered above it (another run's) are left alone. Returns the deleted files."""
    found = epoch_checkpoints(folder)
    older = sorted(epoch for epoch in found if epoch < written)
    removed = [found[epoch] for epoch in older[:max(0, len(older) - (keep_last - 1))]]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def restore_training_state(
    state: dict, *, optimizer: torch.optim.Optimizer, lr_scheduler: torch.optim.lr_scheduler.CosineAnnealingLR,
    scaler: torch.amp.GradScaler | None, source: str,
) -> int:
    """Puts optimizer, schedule and GradScaler where the checkpoint left them; returns the epoch to train next.

    The schedule is this run's (``lr_scheduler.T_max`` epochs down to its ``eta_min``): it goes on from the
    checkpoint's LR and ends at eta_min at the last epoch, also when ``--epochs`` changed. A checkpoint
    without optimizer state (a serving copy) gets a fresh optimizer at the LR of the schedule, with a warning.

    Args:
        source: names the checkpoint in messages.
    Raises:
        ValueError: the checkpoint has already trained all the epochs of this run.
    """
    done = state["epoch"]
    if done >= lr_scheduler.T_max:
        raise ValueError(f"{source} has trained {done} epochs: give --epochs larger than {done} to go on")
    if state.get("optimizer"):
        optimizer.load_state_dict(state["optimizer"])
    else:
        warnings.warn(f"{source} holds no optimizer state (a serving copy): epoch {done + 1} starts a fresh "
                      "optimizer (momentum from zero) at the learning rate of the schedule", ResumeWarning)
        for group in optimizer.param_groups:
            progress = (1 + math.cos(math.pi * done / lr_scheduler.T_max)) / 2
            group["lr"] = lr_scheduler.eta_min + (group["initial_lr"] - lr_scheduler.eta_min) * progress
    # CosineAnnealingLR steps from the current LR towards eta_min at T_max (its recursive form), so only the
    # epoch count is taken over; the saved T_max of a run with another --epochs would make the LR climb again.
    lr_scheduler.last_epoch = done
    if scaler is not None and state.get("scaler"):  # older checkpoints and CPU runs have none
        scaler.load_state_dict(state["scaler"])
    return done + 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def train(args: argparse.Namespace) -> dict:
    """Runs the whole training; returns the last epoch's log record."""
    rank, world, local_rank = init_distributed()
    device = torch.device(args.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"))
    seed_everything(args.seed + rank)
    resumed = read_resume_checkpoint(args.resume) if args.resume else None
    loaders = build_loaders(args, resumed["class_names"] if resumed else parse_class_names(args.classes), world > 1)
    model, config = build_model(args, resumed, num_classes=len(loaders.train_set.class_names) + 1, device=device)
    ddp_model = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[local_rank] if device.type == "cuda" else None)
    optimizer, lr_scheduler = build_optimizer(args, ddp_model)
    scaler = grad_scaler(device, enabled=args.amp)
    start_epoch = 1 if not resumed else restore_training_state(
        resumed, optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=scaler, source=args.resume)
    run = Run(args=args, device=device, world=world, loaders=loaders, model=ddp_model, model_without_ddp=model,
              config=config, optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=scaler, main=is_main_process())
    if run.main:
        run.curves = start_output(run, start_epoch)
    record: dict = {}
    unreadable: Counter[str] = Counter()  # image -> epochs in which it was skipped
    try:
        for epoch in range(start_epoch, args.epochs + 1):
            record, metrics = train_and_evaluate(run, epoch)
            unreadable.update(record["unreadable_images"] + record.get("val_unreadable_images", []))
            if run.main:
                save_epoch(run, epoch, record, metrics)
            barrier()
    finally:  # a failed run keeps its events and curves.png up to the failure
        if run.curves:
            run.curves.close()
    if unreadable:  # only rank 0 has the names
        print(unreadable_summary(unreadable))
    return record


def build_model(args: argparse.Namespace, resumed: dict | None, *, num_classes: int,
                device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The model to train, on ``device``, and its config: the resumed checkpoint's, or a new one (then
    ``args.backbone_weights`` is set to what its backbone starts from)."""
    if resumed:
        config = resumed["model_config"]
        model = model_from_checkpoint(resumed)
    else:
        args.backbone_weights = args.backbone_weights or default_backbone_weights(PRESETS[args.backbone].backbone)
        model, config = build_new_detector(args.backbone, num_classes, args.backbone_weights,
                                           parse_overrides(args.model_override))
    model.to(device)
    if args.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model, config


def build_optimizer(
    args: argparse.Namespace, model: torch.nn.Module,
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.CosineAnnealingLR]:
    """SGD over the trainable parameters, and the cosine schedule from ``--lr`` to ``--eta-min`` at ``--epochs``."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs, eta_min=args.eta_min)


def start_output(run: Run, start_epoch: int) -> TrainingCurves:
    """Rank 0: makes ``--output-dir`` and the run's training curves, and says what the run trains and how much
    disk its checkpoints take."""
    args, train_set, train_loader = run.args, run.loaders.train_set, run.loaders.train
    run.output_dir.mkdir(parents=True, exist_ok=True)
    curves = TrainingCurves(log_dir=run.output_dir, class_names=run.class_names,
                            steps_per_epoch=steps_per_epoch(train_loader, args.max_steps_per_epoch),
                            score_threshold=ServingSettings.score_threshold)
    print(f"training {run.config['backbone']} on {len(train_set)} images of {len(run.class_names)} classes "
          f"({run.world} process{'es' if run.world > 1 else ''}, {run.device}), epochs {start_epoch}..{args.epochs}; "
          f"data: {train_set.layout}" + ("" if args.resume else f"; backbone weights: {args.backbone_weights}"))
    print(checkpoint_size_line(run.model_without_ddp, run.optimizer, epochs=args.epochs - start_epoch + 1,
                               keep_last=args.keep_last))
    return curves


def train_and_evaluate(run: Run, epoch: int) -> tuple[dict, dict | None]:
    """One epoch of training, then the evaluation on the validation split.

    Returns:
        The epoch's log record (with the validation mAP on rank 0), and the metrics (rank 0's; None on the others
        and without ``--val-split``).
    """
    args = run.args
    if run.world > 1:
        run.loaders.sampler.set_epoch(epoch)
    started = time.perf_counter()
    result = train_one_epoch(
        run.model, run.optimizer, run.loaders.train, run.device, epoch,
        warmup_iters=args.warmup_iters if epoch == 1 else 0, scaler=run.scaler,
        max_steps=args.max_steps_per_epoch, show_progress=args.progress and run.main,
        on_step=(lambda step, losses, lr: run.curves.log_step(epoch, step, losses, lr)) if run.curves else None)
    run.lr_scheduler.step()
    record = {"epoch": epoch, **result.losses, "lr": result.lr, "steps": result.steps,
              "unreadable_images": result.unreadable_images, "train_seconds": time.perf_counter() - started}
    metrics = None
    if run.loaders.val is not None:
        metrics = evaluate(run.model_without_ddp, run.loaders.val, run.device, run.class_names)
    if metrics is not None:  # rank 0
        record.update(map50=metrics["map50"], map=metrics["map"], val_unreadable_images=metrics["unreadable_images"])
        print(format_metrics_table(metrics))
    return record, metrics


def save_epoch(run: Run, epoch: int, record: dict, metrics: dict | None) -> None:
    """Rank 0: writes ``Epoch.N.pth`` (deleting older ones beyond ``--keep-last``), the record to ``log.jsonl``
    and the epoch's curves, and prints the epoch's line."""
    args = run.args
    path = save_checkpoint(
        run.output_dir / checkpoint_name(epoch), model=run.model_without_ddp, model_config=run.config,
        class_names=run.class_names, epoch=epoch, optimizer=run.optimizer, lr_scheduler=run.lr_scheduler,
        scaler=run.scaler, args=vars(args))
    removed = ([] if args.keep_last is None else
               remove_older_checkpoints(run.output_dir, written=epoch, keep_last=args.keep_last))
    with open(run.output_dir / "log.jsonl", "a") as log:
        log.write(json.dumps(record) + "\n")
    run.curves.end_epoch(epoch, metrics, run.model_without_ddp,
                         run.loaders.val.dataset if run.loaders.val is not None else None, run.device)
    print(f"epoch {epoch}: loss {record['loss']:.4f}, lr {record['lr']:.2e}"
          + (f", mAP@0.5 {record['map50']:.3f}" if "map50" in record else "") + f" -> {path}"
          + (f" (deleted {', '.join(old.name for old in removed)})" if removed else ""))


def unreadable_summary(unreadable: Counter[str]) -> str:
    """The closing lines on the images skipped as unreadable: the most often skipped first."""
    names = [f"  {name}: skipped in {count} epoch{'s' if count > 1 else ''}"
             for name, count in unreadable.most_common(UNREADABLE_SHOWN)]
    more = len(unreadable) - len(names)
    return "\n".join([f"{len(unreadable)} unreadable image{'s' if len(unreadable) > 1 else ''} skipped "
                      "(log.jsonl lists them per epoch):", *names, *([f"  and {more} more"] if more else [])])


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        if args.resume is None and args.backbone not in PRESETS:
            raise ValueError(f"unknown backbone {args.backbone!r}; choose one of: {', '.join(PRESETS)}")
        if args.keep_last is not None and args.keep_last < 1:
            raise ValueError(f"--keep-last must be 1 or more, got {args.keep_last}")
        train(args)
    except (StepFailedError, NonFiniteLossError) as exc:
        # Raised by every process together: rank 0 says it once; the process that failed adds its traceback.
        if exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__)
        if is_main_process():
            print(f"error: {exc}", file=sys.stderr)
        return 1
    except (DatasetError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
