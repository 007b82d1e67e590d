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
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from handler.checkpoint import (CheckpointError, checkpoint_name, epoch_checkpoints, load_checkpoint,
                                model_from_checkpoint, save_checkpoint)
from handler.detector import BACKBONES, build_detector_from_config, model_config
from handler.settings import ServingSettings
from handler.text import error_line
from training.augmentation import train_transforms
from training.backbones import backbone_start_state, default_backbone_weights
from training.batching import GroupedBatchSampler, aspect_ratio_groups, collate_as_lists
from training.datasets import DatasetError, open_dataset
from training.distributed import (StepFailedError, barrier, get_rank, get_world_size, init_distributed,
                                  is_main_process)
from training.engine import NonFiniteLossError, evaluate, format_metrics_table, train_one_epoch
from training.events import TrainingCurves
from training.layouts import FORMATS
from training.mixed_precision import grad_scaler

UNREADABLE_SHOWN = 10  # unreadable images named in the closing summary (log.jsonl names all)
MAR_MANIFEST = "MAR-INF/MANIFEST.json"  # what makes a zip file a TorchServe model archive


class ResumeWarning(UserWarning):
    """A checkpoint resumed from without part of the training state (e.g. a serving copy)."""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True,
                        help="data set folder (Pascal VOC, COCO or YOLO; see training/layouts.py), COCO .json "
                             "or YOLO data.yaml")
    parser.add_argument("--format", default=None, choices=FORMATS,
                        help="the data set's format when the guess from its files is wrong")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--val-split", default="val", help="split evaluated after each epoch ('' to skip)")
    parser.add_argument("--classes", default=None, help="comma-separated class names: fixes their order")
    parser.add_argument("--backbone", default="vgg16", help=f"one of {', '.join(BACKBONES)}")
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


def parse_class_names(text: str | None) -> list[str] | None:
    """``--classes`` (comma-separated names, fixing their order) as a list; None when not given."""
    return [name.strip() for name in text.split(",")] if text else None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--model-override needs KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def build_new_detector(backbone: str, num_classes: int, weights: str, overrides: dict[str, Any]):
    """A new model whose backbone starts from ``weights`` (see ``training/backbones.py``); returns (model, config).

    Pretrained backbones keep their batch-norm statistics (``backbone_norm``), so the config records what the
    backbone started from.
    """
    pretrained = {"backbone_norm": "frozen_batch_norm"} if weights != "none" else {}
    config = model_config(backbone, num_classes, **{**pretrained, **overrides})  # wrong settings said first
    start_state = backbone_start_state(backbone, weights)
    model = build_detector_from_config(config)
    if start_state is not None:
        try:
            model.backbone.load_state_dict(start_state)
        except RuntimeError as exc:  # keys or shapes of another network
            raise ValueError(f"cannot load {weights} into the {backbone} backbone: {error_line(exc)}") from None
    return model, config


def build_loaders(args, class_names, distributed: bool):
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
    return train_set, sampler, train_loader, val_loader


def read_resume_checkpoint(path: str) -> dict:
    """A checkpoint file, or the checkpoint packed in a TorchServe model archive (``make archive``'s .mar).

    Raises:
        CheckpointError: not a checkpoint of this project, nor an archive holding one.
    """
    if zipfile.is_zipfile(path):  # a torch file is a zip too, but without the archive's manifest
        with zipfile.ZipFile(path) as archive:
            if MAR_MANIFEST in archive.namelist():
                packed = json.loads(archive.read(MAR_MANIFEST)).get("model", {}).get("serializedFile")
                if not packed:
                    raise CheckpointError(f"{path} is a model archive without a checkpoint (no serializedFile)")
                with tempfile.TemporaryDirectory() as folder:
                    return load_checkpoint(archive.extract(packed, folder))
    return load_checkpoint(path)


def checkpoint_size_line(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, epochs: int,
                         keep_last: int | None) -> str:
    """The disk each Epoch.N.pth will take, estimated before any is written: the model's state dict plus SGD's
    momentum buffer (one per trainable parameter, same size); the zip container adds a few kB.

    Args:
        epochs: the epochs this run writes.
        keep_last: ``--keep-last``; None keeps all.
    """
    weights = sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())
    momentum = sum(parameter.numel() * parameter.element_size() for group in optimizer.param_groups
                   if group.get("momentum") for parameter in group["params"])
    each = weights + momentum
    kept = (f"--keep-last {keep_last} keeps the newest {keep_last}: at most {_disk_size(keep_last * each)}"
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
    distributed = world > 1
    device = torch.device(args.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"))
    seed_everything(args.seed + rank)
    class_names = parse_class_names(args.classes)

    resumed = read_resume_checkpoint(args.resume) if args.resume else None
    if resumed:
        class_names = resumed["class_names"]
    train_set, sampler, train_loader, val_loader = build_loaders(args, class_names, distributed)
    class_names = train_set.class_names

    if resumed:
        config = resumed["model_config"]
        model = model_from_checkpoint(resumed)
    else:
        args.backbone_weights = args.backbone_weights or default_backbone_weights(args.backbone)
        model, config = build_new_detector(args.backbone, len(class_names) + 1, args.backbone_weights,
                                           parse_overrides(args.model_override))
    model.to(device)
    if args.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    model_without_ddp = model
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs, eta_min=args.eta_min)
    scaler = grad_scaler(device, enabled=args.amp)
    start_epoch = 1
    if resumed:
        start_epoch = restore_training_state(resumed, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                             scaler=scaler, source=args.resume)

    output_dir = Path(args.output_dir)
    main = is_main_process()
    curves = None
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        curves = TrainingCurves(log_dir=output_dir, class_names=class_names,
                                steps_per_epoch=min(args.max_steps_per_epoch or len(train_loader), len(train_loader)),
                                score_threshold=ServingSettings.score_threshold)
        print(f"training {config['backbone']} on {len(train_set)} images of {len(class_names)} classes "
              f"({world} process{'es' if world > 1 else ''}, {device}), epochs {start_epoch}..{args.epochs}; "
              f"data: {train_set.layout}" + ("" if resumed else f"; backbone weights: {args.backbone_weights}"))
        print(checkpoint_size_line(model_without_ddp, optimizer, epochs=args.epochs - start_epoch + 1,
                                   keep_last=args.keep_last))
    record: dict = {}
    unreadable: Counter[str] = Counter()  # image -> epochs in which it was skipped
    try:
        for epoch in range(start_epoch, args.epochs + 1):
            if distributed:
                sampler.set_epoch(epoch)
            started = time.perf_counter()
            result = train_one_epoch(
                model, optimizer, train_loader, device, epoch,
                warmup_iters=args.warmup_iters if epoch == 1 else 0, scaler=scaler,
                max_steps=args.max_steps_per_epoch, show_progress=args.progress and main,
                on_step=(lambda step, losses, lr: curves.log_step(epoch, step, losses, lr)) if curves else None)
            lr_scheduler.step()
            record = {"epoch": epoch, **result.losses, "lr": result.lr, "steps": result.steps,
                      "unreadable_images": result.unreadable_images, "train_seconds": time.perf_counter() - started}
            unreadable.update(result.unreadable_images)
            metrics = evaluate(model_without_ddp, val_loader, device, class_names) if val_loader is not None else None
            if main:
                if metrics is not None:
                    record.update(map50=metrics["map50"], map=metrics["map"],
                                  val_unreadable_images=metrics["unreadable_images"])
                    unreadable.update(metrics["unreadable_images"])
                    print(format_metrics_table(metrics))
                path = save_checkpoint(
                    output_dir / checkpoint_name(epoch), model=model_without_ddp, model_config=config,
                    class_names=class_names, epoch=epoch, optimizer=optimizer, lr_scheduler=lr_scheduler,
                    scaler=scaler, args=vars(args))
                removed = ([] if args.keep_last is None else
                           remove_older_checkpoints(output_dir, written=epoch, keep_last=args.keep_last))
                with open(output_dir / "log.jsonl", "a") as log:
                    log.write(json.dumps(record) + "\n")
                curves.end_epoch(epoch, metrics, model_without_ddp,
                                 val_loader.dataset if val_loader is not None else None, device)
                print(f"epoch {epoch}: loss {record['loss']:.4f}, lr {record['lr']:.2e}"
                      + (f", mAP@0.5 {record['map50']:.3f}" if "map50" in record else "") + f" -> {path}"
                      + (f" (deleted {', '.join(old.name for old in removed)})" if removed else ""))
            barrier()
    finally:  # a failed run keeps its events and curves.png up to the failure
        if curves:
            curves.close()
    if unreadable:  # only rank 0 has the names
        names = [f"  {name}: skipped in {count} epoch{'s' if count > 1 else ''}"
                 for name, count in unreadable.most_common(UNREADABLE_SHOWN)]
        more = len(unreadable) - len(names)
        print(f"{len(unreadable)} unreadable image{'s' if len(unreadable) > 1 else ''} skipped "
              f"(log.jsonl lists them per epoch):", *names, *([f"  and {more} more"] if more else []), sep="\n")
    return record


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        if args.resume is None and args.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {args.backbone!r}; choose one of: {', '.join(BACKBONES)}")
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
