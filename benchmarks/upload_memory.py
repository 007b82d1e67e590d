"""Memory one batch of large uploads adds, measured in this process on the handler's own path.

    python -m benchmarks.upload_memory                      # the shipped demo model
    python -m benchmarks.upload_memory --checkpoint model/Epoch.12.pth --formats JPEG,PNG

Each case runs in a fresh process what the handler runs for a batch (``Tagger.load_image`` for each upload,
then one ``Tagger.detect_with_fallback``) and prints the peak RSS it adds beyond the same batch of the same
photo already shrunk to the model's input size (run first, so the model's own working memory for that input
is in place): what the size of the upload costs. The process's peak (VmHWM) is reset to its current RSS first
(``/proc/self/clear_refs``), so the upload bytes, already in memory like the worker's request rows, do not
count. The photos are generated in this process and handed over as files, so the measuring process has
never held a large image before. Linux only.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from handler.settings import ServingSettings
from handler.tagging import Tagger
from project import SHIPPED_CHECKPOINT
from training.synthetic import render_image

MB = 1024 * 1024
PHOTO_NOISE = 64  # standard deviation of the noise in a generated photo
# The goals of the serving issues: one 12 MP JPEG, and four 40 MP photos in one batch.
CASES = (("one 12 MP photo", (4000, 3000), 1, 60), ("four 40 MP photos", (7300, 5475), 4, 600))


@dataclass(frozen=True)
class MemoryResult:
    """Peak RSS ``added_mb`` by ``count`` uploads of ``size`` in ``image_format`` (``upload_mb`` each)."""

    case: str
    image_format: str
    size: tuple[int, int]
    count: int
    upload_mb: float
    added_mb: float
    goal_mb: float


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A generated scene at ``size`` with sensor-like noise, so it encodes to a camera-sized file."""
    scene, _ = render_image(random.Random(seed), width=size[0], height=size[1])
    noise = Image.effect_noise(size, PHOTO_NOISE).convert("RGB")
    return Image.blend(scene, noise, 0.1)


def encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **({"quality": 92} if image_format == "JPEG" else {}))
    return buffer.getvalue()


def peak_rss_added_mb(tagger: Tagger, uploads: list[bytes], *, max_pixels: int | None) -> float:
    """MB the handler's path for one batch of ``uploads`` adds to this process's peak RSS."""
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the current RSS
    before = _status_kb("VmRSS")
    images = [tagger.load_image(upload, max_pixels=max_pixels) for upload in uploads]
    tagger.detect_with_fallback(images)
    return (_status_kb("VmHWM") - before) / 1024


def measure(checkpoint: Path, *, image_format: str, max_pixels: int | None) -> list[MemoryResult]:
    """Every case of ``CASES`` in ``image_format``, each in a fresh process."""
    input_size = Tagger.from_checkpoint(checkpoint).input_size
    results = []
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        for case, size, count, goal in CASES:
            large = photo(size)
            upload, model_sized = Path(folder) / "upload", Path(folder) / "model_sized"
            upload.write_bytes(encode(large, image_format))
            model_sized.write_bytes(encode(large.resize(input_size.shrunk(*size)), image_format))
            del large
            with spawn.Pool(1) as pool:
                added = pool.apply(_added_in_fresh_process, (checkpoint, upload, model_sized, count, max_pixels))
            results.append(MemoryResult(case, image_format, size, count, upload.stat().st_size / MB, added, goal))
    return results


def _added_in_fresh_process(
    checkpoint: Path, upload: Path, model_sized: Path, count: int, max_pixels: int | None
) -> float:
    tagger = Tagger.from_checkpoint(checkpoint)
    for _ in range(2):
        tagger.detect_with_fallback([tagger.load_image(model_sized.read_bytes()) for _ in range(count)])
    return peak_rss_added_mb(tagger, [upload.read_bytes()] * count, max_pixels=max_pixels)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.upload_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT, help="model to run")
    parser.add_argument("--formats", default="JPEG", help="comma-separated upload formats, e.g. JPEG,PNG")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    max_pixels = ServingSettings().max_pixels
    print(f"peak RSS added by one batch on the handler's path ({args.checkpoint}), beyond the same batch at the "
          f"model's input size")
    for image_format in args.formats.split(","):
        for result in measure(args.checkpoint, image_format=image_format.strip().upper(), max_pixels=max_pixels):
            width, height = result.size
            print(f"  {result.case:18} {result.image_format:5} {width}x{height}, {result.upload_mb:5.1f} MB each: "
                  f"{result.added_mb:6.1f} MB (goal <= {result.goal_mb} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
