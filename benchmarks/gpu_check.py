"""GPU readiness in one run: the handler core's detections on the GPU against the CPU's, the bare throughput of
the three backbones, and one mixed-precision training step of each.

    python3 -m benchmarks.gpu_check --json gpu_check.json        # a lent GPU: torch, torchvision, Pillow, PyYAML
    python3 -m benchmarks.gpu_check --device cpu --quick         # the same checks, small, on the CPU (the tests)

- detections: the shipped demo model (``model/demo.pth``) through the handler core (``handler.tagging.Tagger``)
  on generated scenes of mixed sizes, on DEVICE in float32, float16 (autocast) and float16 + channels_last,
  each against the CPU in float32. They agree when the detections scoring at least the served threshold
  (``ServingSettings.score_threshold``, 0.5) pair up one to one: same label, every box coordinate within
  ``BOX_TOLERANCE_PX``, score within ``SCORE_TOLERANCE``; a detection scoring within ``SCORE_TOLERANCE`` of the
  threshold may be missing on the other side. (On the CPU the Tagger ignores
  float16 and channels_last, so there the rows only exercise the code.)
- throughput: images per second of ``Tagger.detect`` (the model, its host-to-device copies and the detection
  records) on batches of 1, 4, 8 and 16 generated 600x400 images, for the demo model and the seed's VGG16 and
  ResNet50 (random weights: few boxes pass the score threshold, so post-processing costs little).
- training: one step per backbone on two scenes, the step of ``training/engine.py`` (``training.mixed_precision``:
  float16 autocast and a GradScaler on CUDA only) with the seed's SGD, in the default memory format and in
  channels_last, after a warm-up step (none with --quick): seconds, peak GPU memory, the losses.

``--quick`` keeps a CPU run to about a minute: two scenes, batches of 1 and 2, and seed models with 128-160 px
images and a 256-wide RoI head (not the seed's sizes). The exit status is 1 when a check failed (detections
disagree, a loss is not finite).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torchvision
from torchvision.transforms.functional import pil_to_tensor

from handler.settings import ServingSettings
from handler.tagging import Detection, Tagger
from project import SHIPPED_CHECKPOINT
from training import mixed_precision
from training.presets import build_detector
from training.synthetic import CLASS_NAMES, render_image

SCORE_THRESHOLD = ServingSettings.score_threshold  # the served default
BOX_TOLERANCE_PX = 2.0
SCORE_TOLERANCE = 0.03
SCENE_SIZES = ((320, 320), (480, 480), (640, 480), (480, 640), (800, 600), (600, 400))
THROUGHPUT_IMAGE = (600, 400)  # width, height: the seed's 400/600 frame, so no backbone resizes it
BACKBONE_NAMES = ("demo", "vgg16", "resnet50")
# --quick: small images and a narrow RoI head, so the seed backbones run in seconds on a CPU.
QUICK_OVERRIDES = {"min_size": 128, "max_size": 160, "representation_size": 256}


@dataclass(frozen=True)
class Scene:
    """A generated picture as uint8 pixels (what the handler decodes an upload to) and its objects."""

    pixels: torch.Tensor  # [3, H, W]
    target: dict[str, torch.Tensor]  # "boxes" [N, 4] in pixels, "labels" [N] (1 = CLASS_NAMES[0])


@dataclass(frozen=True)
class Agreement:
    """One variant's detections against the CPU's float32 ones, over all scenes (scores >= 0.5)."""

    variant: str
    reference: int  # CPU detections
    found: int  # this variant's detections
    matched: int
    unmatched: int  # on either side, beyond the borderline scores
    max_box_diff_px: float  # over the matched pairs
    max_score_diff: float
    # Each unmatched detection and its nearest same-label one on the other side, so a reader can judge the gap.
    unmatched_detections: tuple[str, ...] = ()

    @property
    def agrees(self) -> bool:
        return self.unmatched == 0


@dataclass(frozen=True)
class Throughput:
    backbone: str
    precision: str
    batch_size: int
    images_per_second: float


@dataclass(frozen=True)
class TrainingStep:
    backbone: str
    memory_format: str
    seconds: float
    peak_memory_gib: float | None  # None on the CPU
    losses: dict[str, float]

    @property
    def finite(self) -> bool:
        return all(math.isfinite(value) for value in self.losses.values())


def scenes(count: int, *, seed: int, sizes: tuple[tuple[int, int], ...] = SCENE_SIZES) -> list[Scene]:
    """``count`` generated scenes, cycling through the (width, height) ``sizes``."""
    rng = random.Random(seed)
    made = []
    for index in range(count):
        width, height = sizes[index % len(sizes)]
        image, objects = render_image(rng, width=width, height=height)
        target = {"boxes": torch.tensor([box for _, box in objects], dtype=torch.float32),
                  "labels": torch.tensor([label + 1 for label, _ in objects], dtype=torch.int64)}
        made.append(Scene(pixels=pil_to_tensor(image), target=target))
    return made


def compare(variant: str, reference: list[list[Detection]], found: list[list[Detection]], *,
            box_tolerance_px: float = BOX_TOLERANCE_PX) -> Agreement:
    """Pairs each image's confident detections best-first by label and box (see the module docstring);
    ``box_tolerance_px`` widens the box tolerance for boxes reported in a large upload's pixels."""
    counts = {"reference": 0, "found": 0, "matched": 0, "unmatched": 0}
    box_diff = score_diff = 0.0
    unmatched = []
    for image, (every_expected, got) in enumerate(zip(reference, found)):
        expected = [d for d in every_expected if d.score >= SCORE_THRESHOLD]
        candidates = [d for d in got if d.score >= SCORE_THRESHOLD - SCORE_TOLERANCE]
        counts["reference"] += len(expected)
        counts["found"] += sum(d.score >= SCORE_THRESHOLD for d in got)
        for detection in expected:
            pair = next((c for c in candidates if c.label == detection.label
                         and _box_diff(c, detection) <= box_tolerance_px
                         and abs(c.score - detection.score) <= SCORE_TOLERANCE), None)
            if pair is None:
                if detection.score >= SCORE_THRESHOLD + SCORE_TOLERANCE:
                    unmatched.append(f"image {image}: cpu float32 {_describe(detection, got)}")
                continue
            candidates.remove(pair)
            counts["matched"] += 1
            box_diff = max(box_diff, _box_diff(pair, detection))
            score_diff = max(score_diff, abs(pair.score - detection.score))
        unmatched += [f"image {image}: {variant} {_describe(c, every_expected)}"
                      for c in candidates if c.score >= SCORE_THRESHOLD + SCORE_TOLERANCE]
    counts["unmatched"] = len(unmatched)
    return Agreement(variant=variant, **counts, max_box_diff_px=box_diff, max_score_diff=score_diff,
                     unmatched_detections=tuple(unmatched))


def _describe(detection: Detection, others: list[Detection]) -> str:
    """The detection, and the other side's nearest one of its label (by box difference)."""
    text = f"{detection.label} {detection.score:.3f} at {_box_text(detection)}"
    same_label = [other for other in others if other.label == detection.label]
    if not same_label:
        return text + "; no detection of that label on the other side"
    nearest = min(same_label, key=lambda other: _box_diff(other, detection))
    return (text + f"; nearest on the other side: {nearest.score:.3f} at {_box_text(nearest)} "
                   f"(box diff {_box_diff(nearest, detection):.1f} px)")


def _box_text(detection: Detection) -> str:
    return "(" + ", ".join(f"{value:.1f}" for value in detection.box) + ")"


def _box_diff(a: Detection, b: Detection) -> float:
    return max(abs(x - y) for x, y in zip(a.box, b.box))


def check_detections(device: torch.device, images: list[torch.Tensor]) -> list[Agreement]:
    reference = Tagger.from_checkpoint(SHIPPED_CHECKPOINT, device="cpu").detect(images)
    variants = {"float32": {}, "float16": {"half_precision": True},
                "float16 + channels_last": {"half_precision": True, "channels_last": True}}
    return [
        compare(f"{device.type} {name}",
                reference, Tagger.from_checkpoint(SHIPPED_CHECKPOINT, device=device, **options).detect(images))
        for name, options in variants.items()
    ]


def build(backbone: str, device: torch.device, overrides: dict) -> torch.nn.Module:
    """A model with random weights, initialised on ``device`` (fast for the 490 M parameters of resnet50)."""
    torch.manual_seed(0)
    with device:
        return build_detector(backbone, num_classes=len(CLASS_NAMES) + 1, **overrides)


def measure_throughput(backbone: str, device: torch.device, images: list[torch.Tensor], batch_sizes: list[int],
                       *, overrides: dict, calls: int) -> list[Throughput]:
    precisions = {"float32": {}}
    if device.type == "cuda":
        precisions["float16 + channels_last"] = {"half_precision": True, "channels_last": True}
    results = []
    for precision, options in precisions.items():
        tagger = Tagger(model=build(backbone, device, overrides), class_names=CLASS_NAMES, device=device,
                        **options)
        for batch_size in batch_sizes:
            batch = (images * batch_size)[:batch_size]
            tagger.detect(batch)  # one-off costs (kernel choice, allocator) before the clock runs
            started = time.perf_counter()
            for _ in range(calls):
                tagger.detect(batch)  # returns Python records: the device has finished
            seconds = time.perf_counter() - started
            results.append(Throughput(backbone, precision, batch_size, calls * batch_size / seconds))
    return results


def measure_training_step(backbone: str, device: torch.device, samples: list[Scene], *, overrides: dict,
                          channels_last: bool, warm_up: bool) -> TrainingStep:
    model = build(backbone, device, overrides).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=0.0005)  # the seed's
    scaler = mixed_precision.grad_scaler(device)
    images = [sample.pixels.to(device).float() / 255 for sample in samples]
    targets = [{key: value.to(device) for key, value in sample.target.items()} for sample in samples]
    for _ in range(2 if warm_up else 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        with mixed_precision.autocast(device, scaler):
            losses = model(images, targets)
        mixed_precision.backward_and_step(sum(losses.values()), optimizer, scaler)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return TrainingStep(backbone=backbone, memory_format="channels_last" if channels_last else "contiguous",
                        seconds=seconds, peak_memory_gib=peak,
                        losses={name: value.item() for name, value in losses.items()})


def format_report(device_name: str, agreements: list[Agreement], throughputs: list[Throughput],
                  steps: list[TrainingStep], *, quick: bool) -> str:
    lines = [f"device: {device_name}; torch {torch.__version__}, torchvision {torchvision.__version__}, "
             f"python {platform.python_version()}"
             + ("; --quick: seed models at 128-160 px with a 256-wide RoI head" if quick else ""), ""]
    lines.append(f"detections of the demo model against the CPU's float32 (scores >= {SCORE_THRESHOLD}; boxes "
                 f"within {BOX_TOLERANCE_PX:g} px, scores within {SCORE_TOLERANCE:g})")
    lines.append(f"{'variant':<30}{'cpu':>6}{'found':>7}{'matched':>9}{'unmatched':>11}{'box diff':>10}"
                 f"{'score diff':>12}  result")
    for a in agreements:
        lines.append(f"{a.variant:<30}{a.reference:>6}{a.found:>7}{a.matched:>9}{a.unmatched:>11}"
                     f"{a.max_box_diff_px:>10.3f}{a.max_score_diff:>12.4f}  {'agree' if a.agrees else 'DISAGREE'}")
        lines += [f"  unmatched, {text}" for text in a.unmatched_detections]
    batch_sizes = sorted({t.batch_size for t in throughputs})
    width, height = THROUGHPUT_IMAGE
    lines += ["", f"throughput of Tagger.detect, images/s ({width}x{height} images, random weights)",
              f"{'backbone':<10}{'precision':<26}" + "".join(f"{f'batch {b}':>10}" for b in batch_sizes)]
    for backbone, precision in dict.fromkeys((t.backbone, t.precision) for t in throughputs):
        rates = {t.batch_size: t.images_per_second for t in throughputs
                 if (t.backbone, t.precision) == (backbone, precision)}
        lines.append(f"{backbone:<10}{precision:<26}" + "".join(f"{rates[b]:>10.1f}" for b in batch_sizes))
    amp = "float16 autocast + GradScaler" if steps and steps[0].peak_memory_gib is not None else "float32 (CPU)"
    lines += ["", f"one training step, 2 images, {amp}",
              f"{'backbone':<10}{'memory format':<16}{'seconds':>9}{'peak GiB':>10}{'loss':>9}  result"]
    for s in steps:
        peak = f"{s.peak_memory_gib:>10.2f}" if s.peak_memory_gib is not None else f"{'-':>10}"
        lines.append(f"{s.backbone:<10}{s.memory_format:<16}{s.seconds:>9.3f}{peak}{sum(s.losses.values()):>9.3f}"
                     f"  {'finite' if s.finite else 'NOT FINITE'}")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1 or cpu")
    parser.add_argument("--quick", action="store_true", help="small and few: a CPU run in about a minute")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; run with --device cpu", file=sys.stderr)
        return 1
    if device.type == "cuda":
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        torch.cuda.set_device(device)
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU, {torch.get_num_threads()} threads"
    overrides = QUICK_OVERRIDES if args.quick else {}
    batch_sizes = [1, 2] if args.quick else [1, 4, 8, 16]
    calls = 1 if args.quick else 5

    agreements = check_detections(device, [scene.pixels for scene in scenes(2 if args.quick else 12, seed=0)])
    throughput_images = [scene.pixels for scene in scenes(4, seed=1, sizes=(THROUGHPUT_IMAGE,))]
    training_samples = scenes(2, seed=2, sizes=(THROUGHPUT_IMAGE,))
    throughputs, steps = [], []
    for backbone in BACKBONE_NAMES:
        backbone_overrides = {} if backbone == "demo" else overrides
        throughputs += measure_throughput(backbone, device, throughput_images, batch_sizes,
                                          overrides=backbone_overrides, calls=calls)
        for channels_last in ((False, True) if device.type == "cuda" else (False,)):
            steps.append(measure_training_step(backbone, device, training_samples, overrides=backbone_overrides,
                                               channels_last=channels_last, warm_up=not args.quick))
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(format_report(device_name, agreements, throughputs, steps, quick=args.quick))
    if args.json:
        args.json.write_text(json.dumps({
            "device": device_name, "quick": args.quick,
            "detections": [{**asdict(a), "agrees": a.agrees} for a in agreements],
            "throughput": [asdict(t) for t in throughputs],
            "training": [{**asdict(s), "finite": s.finite} for s in steps],
        }, indent=2) + "\n")
    return 0 if all(a.agrees for a in agreements) and all(s.finite for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
