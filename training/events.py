"""Training curves: TensorBoard event files and a PNG of the loss, LR and mAP curves, beside log.jsonl.

    tensorboard --logdir model/          # every run written into model/
    python -m training.events model/     # draws model/curves.png again from the event files

The training CLI writes, on rank 0 only: each step's losses and LR (``train/*``, numbered over the whole run),
each epoch's mAP (``val/map50``, ``val/map``), and a few validation images with their predicted boxes
(``val/predictions/N``). After each epoch it redraws ``curves.png`` from the event files, so the picture also
holds the epochs before a ``--resume``; a run that fails inside an epoch (a diverged loss) still ends with
its events written and the picture redrawn, up to the last step before the failure.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter
from torchvision.transforms.functional import to_pil_image

from common.draw import draw_boxes
from training.datasets import DetectionDataset, UnreadableImage

CURVES_FILE = "curves.png"
PREDICTION_IMAGES = 4  # validation images shown with their predicted boxes after each epoch


class TrainingCurves:
    """Writes one run's curves into its output folder.

    Args:
        log_dir: the run's output folder (beside log.jsonl and the checkpoints).
        steps_per_epoch: the steps each epoch trains, to number the steps of the whole run.
        class_names: ``class_names[i]`` names label i+1.
        score_threshold: the predicted boxes drawn on validation images score at least this.
    """

    def __init__(self, *, log_dir: Path, steps_per_epoch: int, class_names: Sequence[str],
                 score_threshold: float) -> None:
        self.log_dir = Path(log_dir)
        self.steps_per_epoch = steps_per_epoch
        self.class_names = list(class_names)
        self.score_threshold = score_threshold
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self._steps_not_drawn = False  # steps logged since curves.png was last drawn

    def log_step(self, epoch: int, step: int, losses: Mapping[str, float], lr: float) -> None:
        """One training step (``step`` counts from 0 in each epoch)."""
        run_step = (epoch - 1) * self.steps_per_epoch + step + 1
        for name, value in losses.items():
            self.writer.add_scalar(f"train/{name}", value, run_step)
        self.writer.add_scalar("train/lr", lr, run_step)
        self._steps_not_drawn = True

    def end_epoch(self, epoch: int, metrics: Mapping[str, Any] | None, model: torch.nn.Module,
                  val_set: DetectionDataset | None, device: torch.device) -> Path:
        """The epoch's mAP and predictions on the first validation images; redraws the PNG, returns its path."""
        if metrics is not None:
            self.writer.add_scalar("val/map50", metrics["map50"], epoch)
            self.writer.add_scalar("val/map", metrics["map"], epoch)
        if val_set is not None:
            for number, picture in enumerate(self._predictions(model, val_set, device)):
                self.writer.add_image(f"val/predictions/{number}", np.asarray(picture), epoch, dataformats="HWC")
        self.writer.flush()
        self._steps_not_drawn = False
        return draw_curves(self.log_dir)

    def close(self) -> None:
        """Writes the events still buffered (the writer keeps up to two minutes of them) and redraws curves.png
        when steps came after the last epoch's picture: a failed run keeps the steps before its failure."""
        self.writer.close()
        if self._steps_not_drawn:
            draw_curves(self.log_dir)

    @torch.inference_mode()
    def _predictions(self, model: torch.nn.Module, val_set: DetectionDataset, device: torch.device) -> list:
        samples = [val_set[i] for i in range(min(PREDICTION_IMAGES, len(val_set)))]
        images = [image for image, _ in (s for s in samples if not isinstance(s, UnreadableImage))]
        if not images:
            return []
        model.eval()
        outputs = model([image.to(device) for image in images])
        pictures = []
        for image, output in zip(images, outputs):
            detections = [{"label": self.class_names[label - 1], "score": score, "box": box}
                          for box, label, score in zip(output["boxes"].tolist(), output["labels"].tolist(),
                                                       output["scores"].tolist()) if score >= self.score_threshold]
            pictures.append(draw_boxes(to_pil_image(image.cpu()), detections))
        return pictures


def draw_curves(log_dir: Path, output: Path | None = None) -> Path:
    """Draws the loss, LR and mAP curves of the event files in ``log_dir`` into a PNG (``log_dir/curves.png``).

    A step logged twice (a run resumed from an earlier epoch, or a new run into the same folder) keeps its
    newest value.
    """
    log_dir = Path(log_dir)
    output = Path(output) if output is not None else log_dir / CURVES_FILE
    scalars = read_scalars(log_dir)
    figure = Figure(figsize=(16, 4.5), layout="constrained")
    losses, rates, maps = figure.subplots(1, 3)
    for tag in sorted(t for t in scalars if t.startswith("train/") and t not in ("train/lr", "train/loss")):
        steps, values = scalars[tag]
        losses.plot(steps, values, linewidth=1, alpha=0.8, label=tag.removeprefix("train/"))
    if "train/loss" in scalars:
        losses.plot(*scalars["train/loss"], color="black", linewidth=2, label="loss (sum)")
    losses.set(title="training losses per step", xlabel="step", ylim=(0, None))
    if "train/lr" in scalars:
        rates.plot(*scalars["train/lr"], color="tab:purple")
        if max(scalars["train/lr"][1]) > 10 * max(min(scalars["train/lr"][1]), 1e-12):
            rates.set_yscale("log")
    rates.set(title="learning rate per step", xlabel="step")
    for tag, label in (("val/map50", "mAP@0.5"), ("val/map", "mAP@[.5:.95]")):
        if tag in scalars:
            maps.plot(*scalars[tag], marker="o", label=label)
    maps.set(title="validation mAP per epoch", xlabel="epoch", ylim=(0, 1))
    if not any(tag.startswith("val/map") for tag in scalars):
        maps.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=maps.transAxes)
    for axes in (losses, maps):
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="small")
    for axes in (losses, rates, maps):
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(str(log_dir))
    partial = output.with_name(f".{output.name}.partial")
    figure.savefig(partial, format="png", dpi=80)
    os.replace(partial, output)  # an image viewer never sees half a file
    return output


def read_scalars(log_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """tag -> (steps, values) of every scalar in the folder's event files, by step, newest value per step."""
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 1, "tensors": 1})
    events.Reload()
    scalars = {}
    for tag in events.Tags()["scalars"]:
        by_step = {event.step: event.value for event in events.Scalars(tag)}
        steps = sorted(by_step)
        scalars[tag] = (steps, [by_step[step] for step in steps])
    return scalars


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Draws the training curves of a run folder into a PNG.")
    parser.add_argument("log_dir", help="the folder a training run wrote (its --output-dir)")
    parser.add_argument("--output", default=None, help=f"the PNG to write (default: LOG_DIR/{CURVES_FILE})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    log_dir = Path(args.log_dir)
    if not any(log_dir.glob("events.out.tfevents.*")):
        print(f"error: no TensorBoard event files in {log_dir}", file=sys.stderr)
        return 1
    print(draw_curves(log_dir, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
