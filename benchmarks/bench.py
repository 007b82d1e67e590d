"""Serving benchmark in one run: the bare model, a plain one-image-per-request server, and TorchServe.

    make bench                                    # starts `make serve` first, then runs this
    python -m benchmarks.bench --seconds 30       # longer phases, steadier numbers
    python -m benchmarks.bench --device cuda --parts bare,baseline   # a GPU machine without Java

All parts use the same weights (the checkpoint inside the archive that config.properties serves) and the same
generated JPEGs of mixed sizes:

- bare: the handler's model core (``Tagger.detect``) on decoded images, for every process x thread layout that
  fills the cores (on a GPU: 1, 2 and 4 processes sharing it) and each batch size; the best layout is the bar
  for the served model.
- baseline: a plain server written with the standard library (``http.server``), one model call per request
  with the handler's own decoding, torch's default threads; model calls are serialised, so each one has all
  cores (concurrent calls would only compete for them).
- static: TorchServe with the same archive settings but a fixed layout, for every workers x threads layout
  that fills the cores (CPU only; each started on free ports and stopped after): the layouts a static
  configuration could choose, against which the served threads that follow the load are measured.
- served: the running TorchServe of ``make serve``, at 1, 8 and 16 closed-loop clients (each sends its next
  image when its last one is answered), then the worker's peak RSS and the RSS one 12 MP JPEG adds.
- precision (CPU): the model's FLOPs per image, the machine's float32 and bfloat16 peak, and the model core's
  ms per image and GFLOP/s in each ``handler.cpu_runtime`` (``benchmarks/precision.py``); then TorchServe
  with the archive's settings in each runtime this CPU runs natively other than the served one, at 1 and 8
  clients, against the served TorchServe.

It prints img/s and p50/p90 latency of each, then the ratios the serving goals are stated in.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import multiprocessing
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import psutil
import requests
import torch
import yaml

from benchmarks.precision import precision_report
from client.config import ServerConfig, ServerConfigError, read_server_config
from client.keys import KEY_FILE, SERVED_KEY_FILE, KeyFileError, bearer, read_keys
from common.model_archive import ArchiveReadError, extract_serialized_file, packed_model_config
from handler.core_sharing import busy_threads, record_folder
from handler.decode import ImageError
from handler.precision import resolve_cpu_runtime
from handler.settings import ServingSettings, settings_from_config
from handler.sizing import cpu_cores
from handler.text import shorten
from handler.tagging import Tagger, detections_above, format_response
from project import MODEL_CONFIG, SERVER_CONFIG
from scripts.make_archive import build_archive
from scripts.serve import running_server, served_layout, server_on_free_ports
from training.synthetic import render_image

# Mixed sizes, portrait and landscape: the model resizes each to its own min_size/max_size.
IMAGE_SIZES = ((320, 320), (480, 480), (640, 480), (480, 640), (800, 600), (1280, 960))
LARGE_PHOTO = (4000, 3000)  # 12 MP, a phone photo
PARTS = ("bare", "baseline", "static", "served", "precision")
SAMPLE_S = 0.01  # how often the busy workers' threads are sampled


@dataclass(frozen=True)
class Measurement:
    """What one phase did: ``images`` answered in ``seconds``, with the latency of each call (seconds)."""

    name: str
    images: int
    seconds: float
    latencies: list[float]
    # Percent of a core each watched process used during the phase (``run_clients``'s ``watch``).
    cpu_percent: dict[str, float] = field(default_factory=dict)
    # Torch threads of the busy workers together, sampled every SAMPLE_S (``run_clients``'s ``busy_record``).
    threads_in_use: list[int] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds

    def latency_ms(self, quantile: float) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, round(quantile * (len(ordered) - 1)))]

    def row(self) -> str:
        return (f"{self.name:<58} {self.images_per_second:7.1f} {self.latency_ms(0.5):8.0f} "
                f"{self.latency_ms(0.9):8.0f}")


def generate_jpegs(count: int, *, seed: int = 0, sizes: tuple[tuple[int, int], ...] = IMAGE_SIZES) -> list[bytes]:
    """``count`` generated scenes as JPEG files, cycling through ``sizes``."""
    rng = random.Random(seed)
    jpegs = []
    for index in range(count):
        width, height = sizes[index % len(sizes)]
        image, _ = render_image(rng, width=width, height=height)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    return jpegs


# ---- bare model ----

def _bare_process(checkpoint: str, device: str, runtime: str, threads: int, batch_sizes: list[int],
                  jpegs: list[bytes], seconds: float, barrier, results) -> None:
    """One process of a bare layout: the same phases as its peers, started together at each barrier."""
    torch.set_num_threads(threads)
    tagger = Tagger.from_checkpoint(checkpoint, device=device, cpu_runtime=runtime)
    images = [tagger.load_image(data) for data in jpegs]
    tagger.detect(images[:1])  # one-off costs (allocator, kernels) before the clock runs
    for batch_size in batch_sizes:
        done, latencies = 0, []
        barrier.wait()
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            first = done % len(images)
            batch = (images + images)[first:first + batch_size]
            call = time.perf_counter()
            tagger.detect(batch)
            latencies.append(time.perf_counter() - call)
            done += len(batch)
        results.put((batch_size, done, time.perf_counter() - started, latencies))


def bare_layouts(*, device: str, cores: int) -> list[tuple[int, int]]:
    """(processes, threads each) that fill the cores; on a GPU, 1, 2 or 4 processes sharing it (TorchServe's
    workers per GPU), so the measured best can be compared with the served default of one."""
    if device != "cpu":
        return [(processes, max(1, cores // processes)) for processes in (1, 2, 4)]
    return [(processes, cores // processes) for processes in range(1, cores + 1) if cores % processes == 0]


def measure_bare(checkpoint: Path, jpegs: list[bytes], *, device: str, cores: int, batch_sizes: list[int],
                 seconds: float, runtime: str) -> Iterator[Measurement]:
    """Every layout at every batch size, yielded as each layout ends; each process works through its share of
    the images, the model run as ``runtime`` (``handler.cpu_runtime``) runs it on a CPU."""
    context = multiprocessing.get_context("spawn")
    for processes, threads in bare_layouts(device=device, cores=cores):
        barrier, results = context.Barrier(processes), context.Queue()
        workers = [
            context.Process(target=_bare_process, args=(str(checkpoint), device, runtime, threads, batch_sizes,
                                                        jpegs[rank::processes], seconds, barrier, results))
            for rank in range(processes)
        ]
        for worker in workers:
            worker.start()
        collected = [results.get() for _ in range(processes * len(batch_sizes))]
        for worker in workers:
            worker.join()
            if worker.exitcode != 0:
                raise RuntimeError(f"a bare-model process failed (exit code {worker.exitcode})")
        for batch_size in batch_sizes:
            runs = [run for run in collected if run[0] == batch_size]
            yield Measurement(
                name=f"bare model, {_count(processes, 'process', 'processes')} x {_count(threads, 'thread')}, "
                     f"batch {batch_size}",
                images=sum(run[1] for run in runs), seconds=max(run[2] for run in runs),
                latencies=[latency for run in runs for latency in run[3]],
            )


# ---- the plain baseline server ----

def baseline_server(checkpoint: str, device: str, ready) -> None:
    """ThreadingHTTPServer: POST an image, get the handler's dict response; one model call per request."""
    tagger = Tagger.from_checkpoint(checkpoint, device=device)
    model_lock = threading.Lock()

    class TagRequest(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # kept-alive connections, as TorchServe's
        disable_nagle_algorithm = True  # headers and body are two writes: Nagle would hold the body ~40 ms

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                image = tagger.load_image(body)  # the handler's own decoding
            except ImageError as error:
                self._answer(error.status, {"error": error.error, "message": str(error)})
                return
            with model_lock:
                (detections,) = tagger.detect([image])
            self._answer(200, format_response(detections_above(detections, threshold=ServingSettings.score_threshold),
                                              response_format="dict",
                                              width=image.width, height=image.height))

        def _answer(self, status: int, content: object) -> None:
            payload = json.dumps(content).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:  # one line per request would cost more than the answer
            pass

    class BaselineServer(ThreadingHTTPServer):
        request_queue_size = 64  # 16 clients connect at once: the default backlog of 5 reset some of them

    server = BaselineServer(("127.0.0.1", 0), TagRequest)
    ready.put(server.server_address[1])
    server.serve_forever()


@contextlib.contextmanager
def archive_server(checkpoint: Path, *, server_config: Path, folder: Path, workers: int | None = None,
                   handler: dict[str, object]) -> Iterator[tuple[str, dict[str, str]]]:
    """TorchServe with ``model/model-config.yaml``'s settings but ``handler`` over its ``handler:`` section and
    ``workers`` workers when given, on free ports in ``folder``; yields its predictions URL and the inference
    key's header, and stops it after. With ``torch_threads`` in ``handler`` the workers keep that many threads
    (a fixed layout) rather than follow the load."""
    model_config = yaml.safe_load(MODEL_CONFIG.read_text()) or {}
    if workers is not None:
        model_config.update(minWorkers=workers, maxWorkers=workers)
    model_config["handler"] = {**(model_config.get("handler") or {}), **handler}
    store = folder / "store"
    (folder / MODEL_CONFIG.name).write_text(yaml.safe_dump(model_config))
    build_archive(checkpoint, output=store / read_server_config(server_config).archive.name,
                  model_config_file=folder / MODEL_CONFIG.name)
    with server_on_free_ports(store, folder, server_config=server_config) as server:
        yield server.config.predictions_url, bearer(read_keys(server.start_dir / KEY_FILE).inference)


# ---- load generator ----

def run_clients(url: str, jpegs: list[bytes], *, clients: int, seconds: float, headers: dict[str, str],
                name: str, watch: dict[str, psutil.Process] | None = None,
                busy_record: Path | None = None) -> Measurement:
    """``clients`` closed-loop clients for ``seconds``; every answer must be 200. ``watch`` names processes
    whose CPU use is measured over the phase; ``busy_record`` is the workers' record of busy cores
    (handler/core_sharing.py), sampled over the phase."""
    start = threading.Barrier(clients)
    headers = {"Content-Type": "image/jpeg", **headers}
    target = urlsplit(url)

    def client(offset: int) -> list[float]:
        # http.client on one kept-alive connection: the load generator shares the cores with the server, and
        # requests' per-call work would take a few percent of a core from it.
        latencies = []
        connection = http.client.HTTPConnection(target.hostname, target.port)
        try:
            try:
                connection.connect()  # before the clock runs
            except BaseException:
                start.abort()  # the other clients stop waiting (BrokenBarrierError) instead of hanging
                raise
            start.wait()
            began = time.perf_counter()
            index = offset
            while time.perf_counter() - began < seconds:
                call = time.perf_counter()
                connection.request("POST", target.path, body=jpegs[index % len(jpegs)], headers=headers)
                answer = connection.getresponse()
                body = answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"{url} answered {answer.status}: {shorten(body.decode(errors='replace'), 200)}")
                latencies.append(time.perf_counter() - call)
                index += clients
        finally:
            connection.close()
        return latencies

    watch = watch or {}
    threads_in_use: list[int] = []
    phase_over = threading.Event()

    def sample_threads() -> None:
        while busy_record is not None and not phase_over.wait(SAMPLE_S):
            threads_in_use.append(sum(busy_threads(busy_record)))

    sampler = threading.Thread(target=sample_threads, daemon=True)
    cpu_before = _cpu_seconds(watch)
    began = time.perf_counter()
    sampler.start()
    try:
        with ThreadPoolExecutor(max_workers=clients) as pool:
            latencies = [t for each in pool.map(client, range(clients)) for t in each]
    finally:
        phase_over.set()
        sampler.join()
    elapsed = time.perf_counter() - began
    cpu_percent = {label: 100 * (used - cpu_before[label]) / elapsed for label, used in _cpu_seconds(watch).items()}
    return Measurement(name=name, images=len(latencies), seconds=elapsed, latencies=latencies,
                       cpu_percent=cpu_percent, threads_in_use=threads_in_use)


def _cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    """User and system CPU seconds each process has used so far."""
    return {label: sum(process.cpu_times()[:2]) for label, process in processes.items()}


def measure_server(url: str, jpegs: list[bytes], *, clients: list[int], seconds: float, headers: dict[str, str],
                   name: str, watch: dict[str, psutil.Process] | None = None,
                   busy_record: Path | None = None) -> dict[int, Measurement]:
    run_clients(url, jpegs, clients=max(clients), seconds=min(seconds, 2.0), headers=headers, name="warm-up")
    return {count: run_clients(url, jpegs, clients=count, seconds=seconds, headers=headers,
                               name=f"{name}, {_count(count, 'client')}", watch=watch, busy_record=busy_record)
            for count in clients}


def threads_line(served: dict[int, Measurement], *, cores: int) -> str:
    """The torch threads the busy workers ran together in each phase, against the cores."""
    phases = []
    for count, measurement in served.items():
        samples = measurement.threads_in_use
        if samples:
            over = sum(1 for threads in samples if threads > cores) / len(samples)
            phases.append(f"{_count(count, 'client')}: mean {statistics.fmean(samples):.2f}, max {max(samples)}, "
                          f"over {cores} in {100 * over:.1f}% of samples")
    return (f"torch threads of the busy workers, sampled every {SAMPLE_S * 1000:.0f} ms: " + "; ".join(phases)
            if phases else "torch threads: the workers keep a fixed count (no busy record)")


def loaded_clients(clients: list[int]) -> int:
    """The client count the goals are stated at: 8, else the most measured."""
    return 8 if 8 in clients else max(clients)


def _count(number: int, singular: str, plural: str | None = None) -> str:
    return f"{number} {singular if number == 1 else plural or singular + 's'}"


# ---- worker memory ----

def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def torchserve_workers() -> list[psutil.Process]:
    server = running_server()
    if server is None:
        raise RuntimeError("TorchServe is not running: start it with `make serve`")
    return [p for p in server.children(recursive=True) if "model_service_worker" in " ".join(p.cmdline())]


def rss_added_by(url: str, photo: bytes, *, headers: dict[str, str]) -> float:
    """MB one request with ``photo`` adds to the peak RSS of the worker that answers it: each worker's peak
    (VmHWM) is reset to its current RSS first (/proc/PID/clear_refs)."""
    workers = torchserve_workers()
    before = {}
    for worker in workers:
        Path(f"/proc/{worker.pid}/clear_refs").write_text("5")
        before[worker.pid] = _status_kb(worker.pid, "VmRSS")
    answer = requests.post(url, data=photo, headers={"Content-Type": "image/jpeg", **headers})
    if answer.status_code != 200:
        raise RuntimeError(f"the 12 MP photo got {answer.status_code}: {shorten(answer.text, 200)}")
    return max(_status_kb(w.pid, "VmHWM") - before[w.pid] for w in workers) / 1024


# ---- report ----

def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu_cores()}-core CPU ({cpu}){gpu}, torch {torch.__version__}"


def ratio_line(name: str, value: float, goal: str) -> str:
    return f"  {name:<42} {value:5.2f}   (goal {goal})"


def add_served_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--key-file``: the TorchServe of ``make serve`` that a benchmark loads."""
    parser.add_argument("--config", type=Path, default=SERVER_CONFIG, help="TorchServe config of `make serve`")
    parser.add_argument("--key-file", type=Path, default=SERVED_KEY_FILE,
                        help="the served TorchServe's key file, in the folder it started in (default: make serve's)")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="bare model and baseline server device: cpu or cuda")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--images", type=int, default=24, help="generated JPEGs, cycling through the sizes")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measured phase")
    parser.add_argument("--clients", default="1,8,16", help="closed-loop client counts for the servers")
    parser.add_argument("--batch-sizes", default="1,4,8", help="bare-model batch sizes (CPU); a GPU adds 16")
    add_served_arguments(parser)
    parser.add_argument("--checkpoint", type=Path,
                        help="weights of the bare model and the baseline (default: those in the served archive)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS):
        raise SystemExit(f"--parts: unknown {', '.join(sorted(parts - set(PARTS)))}")
    clients = [int(count) for count in args.clients.split(",")]
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")] + ([16] if args.device != "cpu" else [])
    cores = cpu_cores()
    try:
        return _run(args, parts=parts, clients=clients, batch_sizes=batch_sizes, cores=cores)
    except (RuntimeError, KeyFileError, ServerConfigError, ArchiveReadError, requests.RequestException,
            http.client.HTTPException, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, *, parts: set[str], clients: list[int], batch_sizes: list[int], cores: int) -> int:
    config = read_server_config(args.config)
    jpegs = generate_jpegs(args.images)
    configured_runtime = cpu_runtime_of(yaml.safe_load(MODEL_CONFIG.read_text()) or {})
    print(f"machine: {machine()}; bare and baseline on {args.device}; the bare model runs as the served workers do "
          f"({configured_runtime} on a CPU), the baseline in PyTorch float32")
    print(f"images: {len(jpegs)} generated JPEGs, {', '.join(f'{w}x{h}' for w, h in IMAGE_SIZES)}; "
          f"weights from {args.checkpoint or config.archive}; {args.seconds:g} s per phase")
    print(f"{'':<58} {'img/s':>7} {'p50 ms':>8} {'p90 ms':>8}")

    results = PartResults()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or extract_serialized_file(config.archive, Path(tmp))
        if "bare" in parts:
            results.bare_best = best_bare_layout(checkpoint, jpegs, args=args, cores=cores, batch_sizes=batch_sizes,
                                                 runtime=configured_runtime)
        if "baseline" in parts:
            results.baseline = measure_baseline(checkpoint, jpegs, args=args, clients=clients)
        if "static" in parts and args.device == "cpu":
            results.static_best = best_static_layout(checkpoint, jpegs, args=args, clients=clients, cores=cores)
        if "served" in parts:
            results.served = measure_served(config, jpegs, args=args, clients=clients, cores=cores)
        if "precision" in parts and args.device == "cpu":
            results.served_runtime = cpu_runtime_of(packed_model_config(config.archive))
            results.precision_servers = measure_precision_servers(args, checkpoint=checkpoint, jpegs=jpegs,
                                                                  clients=clients,
                                                                  served_runtime=results.served_runtime)
    print_ratios(results, clients=clients, config=config)
    return 0


@dataclass
class PartResults:
    """What the parts measured that the ratios compare; None (no servers) for a part that did not run.

    Args:
        bare_best: the bare layout and batch size with the most img/s.
        baseline / served: the plain server's and the served TorchServe's phases, by client count.
        static_best: the fixed TorchServe layout with the most img/s at the loaded client count.
        precision_servers: TorchServe's phases in each other CPU runtime, by runtime, then client count.
        served_runtime: how the served archive's CPU workers run the model (with ``precision_servers``).
    """

    bare_best: Measurement | None = None
    baseline: dict[int, Measurement] | None = None
    static_best: Measurement | None = None
    served: dict[int, Measurement] | None = None
    precision_servers: dict[str, dict[int, Measurement]] = field(default_factory=dict)
    served_runtime: str | None = None


def best_bare_layout(checkpoint: Path, jpegs: list[bytes], *, args: argparse.Namespace, cores: int,
                     batch_sizes: list[int], runtime: str) -> Measurement:
    """The bare part: prints every layout at every batch size as it ends, the model run as ``runtime``; the
    best one."""
    bare = []
    for measurement in measure_bare(checkpoint, jpegs, device=args.device, cores=cores, batch_sizes=batch_sizes,
                                    seconds=args.seconds, runtime=runtime):
        print(measurement.row(), flush=True)
        bare.append(measurement)
    return max(bare, key=lambda m: m.images_per_second)


def measure_baseline(checkpoint: Path, jpegs: list[bytes], *, args: argparse.Namespace,
                     clients: list[int]) -> dict[int, Measurement]:
    """The baseline part: the plain server in a process of its own, at each client count; prints each phase."""
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    server = context.Process(target=baseline_server, args=(str(checkpoint), args.device, ready), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{ready.get()}/"
        baseline = measure_server(url, jpegs, clients=clients, seconds=args.seconds, headers={},
                                  name=f"baseline http.server, {_count(torch.get_num_threads(), 'thread')}")
    finally:
        server.terminate()
        server.join()
    for measurement in baseline.values():
        print(measurement.row())
    return baseline


def best_static_layout(checkpoint: Path, jpegs: list[bytes], *, args: argparse.Namespace, clients: list[int],
                       cores: int) -> Measurement | None:
    """The static part: TorchServe in each fixed workers x threads layout, each printed; the one with the most
    img/s at the loaded client count."""
    loaded = loaded_clients(clients)
    static_best = None
    for workers, threads in bare_layouts(device="cpu", cores=cores):
        with tempfile.TemporaryDirectory() as folder, archive_server(
                checkpoint, workers=workers, handler={"torch_threads": threads}, server_config=args.config,
                folder=Path(folder)) as (url, auth):
            static = measure_server(url, jpegs, clients=clients, seconds=args.seconds, headers=auth,
                                    name=f"TorchServe {workers}x{threads} fixed")
        for measurement in static.values():
            print(measurement.row(), flush=True)
        if static_best is None or static[loaded].images_per_second > static_best.images_per_second:
            static_best = static[loaded]
    return static_best


def measure_served(config: ServerConfig, jpegs: list[bytes], *, args: argparse.Namespace, clients: list[int],
                   cores: int) -> dict[int, Measurement]:
    """The served part: the running TorchServe at each client count with the CPU use of who shares the cores and
    the workers' threads, then the workers' memory; prints each."""
    keys = read_keys(args.key_file)
    layout = served_layout(config, keys)
    described = requests.get(f"{config.management_url}/models/{config.model_name}",
                             headers=bearer(keys.management)).json()[0]
    name = (f"TorchServe {layout.label}, batch {described['batchSize']}, "
            f"delay {described['maxBatchDelay']} ms")
    auth = bearer(keys.inference)
    # Who shares the cores with the model workers: the Java front end and this load generator.
    watch = {"front end (Java)": running_server(), "load generator": psutil.Process()}
    watch.update({f"worker {n}": worker for n, worker in enumerate(torchserve_workers())})
    busy_record = record_folder(watch["front end (Java)"].pid) if layout.follows_load else None
    served = measure_server(config.predictions_url, jpegs, clients=clients, seconds=args.seconds,
                            headers=auth, name=name, watch=watch, busy_record=busy_record)
    for measurement in served.values():
        print(measurement.row())
    loaded_phase = served[loaded_clients(clients)]
    print(f"CPU, % of a core, {loaded_phase.name.rsplit(', ', 1)[1]}: "
          + ", ".join(f"{label} {percent:.1f}" for label, percent in loaded_phase.cpu_percent.items()))
    print(threads_line(served, cores=cores))
    peak = max(_status_kb(worker.pid, "VmHWM") for worker in torchserve_workers()) / 1024
    photo = generate_jpegs(1, seed=1, sizes=(LARGE_PHOTO,))[0]
    added = rss_added_by(config.predictions_url, photo, headers=auth)
    print(f"TorchServe worker peak RSS {peak:.0f} MB; one 12 MP JPEG ({len(photo) / 1e6:.1f} MB) "
          f"adds {added:.0f} MB (goal <= 60)")
    return served


def print_ratios(results: PartResults, *, clients: list[int], config: ServerConfig) -> None:
    """The ratios the serving goals are stated in, of the parts that ran."""
    print("ratios:")
    loaded = loaded_clients(clients)
    bare_best, baseline, static_best, served = (results.bare_best, results.baseline, results.static_best,
                                                results.served)
    if bare_best is not None:
        print(f"  best bare layout: {bare_best.name} ({bare_best.images_per_second:.1f} img/s)")
    if served and baseline:
        print(ratio_line(f"served / baseline img/s, {loaded} clients",
                         served[loaded].images_per_second / baseline[loaded].images_per_second, ">= 1.25"))
    if static_best is not None:
        print(f"  best fixed layout, {loaded} clients: {static_best.name} ({static_best.images_per_second:.1f} img/s)")
    if served and static_best:
        print(ratio_line(f"served / best fixed layout img/s, {loaded} clients",
                         served[loaded].images_per_second / static_best.images_per_second, ">= 0.95"))
    if served and bare_best:
        print(ratio_line(f"served {loaded} clients / bare best img/s",
                         served[loaded].images_per_second / bare_best.images_per_second, ">= 0.9"))
    if served and baseline and 1 in clients:
        print(ratio_line("lone request p50, served / baseline",
                         served[1].latency_ms(0.5) / baseline[1].latency_ms(0.5), "<= 1.1"))
    if served:
        served_runtime = results.served_runtime
        for runtime, other in results.precision_servers.items():
            # The goals of a faster runtime: against the PyTorch float32 the workers ran before it.
            faster = served_runtime != "float32" and runtime == "float32"
            print(ratio_line(f"lone request, {served_runtime} served / {runtime} speed-up",
                             other[1].latency_ms(0.5) / served[1].latency_ms(0.5), ">= 1.6" if faster else "-"))
            print(ratio_line(f"{served_runtime} served / {runtime} img/s, {loaded} clients",
                             served[loaded].images_per_second / other[loaded].images_per_second,
                             ">= 1.5" if faster else "-"))


def cpu_runtime_of(model_config: dict) -> str:
    """How the CPU workers of ``model_config`` (``model/model-config.yaml``, or the one an archive packs) run
    the model on this machine (``handler/precision.py``'s rule; a model over its parameter bound, which ``auto``
    leaves to PyTorch, is not told apart here)."""
    return resolve_cpu_runtime(settings_from_config(model_config.get("handler")).cpu_runtime)


def measure_precision_servers(args: argparse.Namespace, *, checkpoint: Path, jpegs: list[bytes], clients: list[int],
                              served_runtime: str) -> dict[str, dict[int, Measurement]]:
    """The precision part: the model core in each runtime (``benchmarks/precision.py``), then TorchServe in
    each one this CPU runs natively, other than the served one, at 1 and the loaded client count."""
    lines, costs = precision_report(checkpoint, jpegs, seconds=args.seconds / 2)
    print("\n".join(lines), flush=True)
    counts = sorted({1, loaded_clients(clients)})
    servers = {}
    for cost in costs:
        if cost.runtime == served_runtime:
            continue
        if not cost.native:
            print(f"TorchServe in {cost.runtime}: not started, this CPU emulates it "
                  f"({cost.ms_per_image / costs[0].ms_per_image:.0f}x float32's model time)")
            continue
        with tempfile.TemporaryDirectory() as folder, archive_server(
                checkpoint, handler={"cpu_runtime": cost.runtime}, server_config=args.config,
                folder=Path(folder)) as (url, auth):
            servers[cost.runtime] = measure_server(url, jpegs, clients=counts, seconds=args.seconds, headers=auth,
                                                   name=f"TorchServe in {cost.runtime}")
        for measurement in servers[cost.runtime].values():
            print(measurement.row(), flush=True)
    return servers


if __name__ == "__main__":
    sys.exit(main())
