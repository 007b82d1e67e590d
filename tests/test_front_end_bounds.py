"""The front end's memory bound and the watchdog of `make serve`, on the real TorchServe.

A server started as `make serve` starts it (``start_server`` + ``wait_until_ready`` + ``start_watchdog``), with
config.properties' vmargs but a tiny heap, is flooded with authenticated urlencoded bodies of empty fields
(``a&a&a...``: Netty's form decoder keeps an object per field, CVE-2024-29025's family) until its JVM exits on
OutOfMemoryError (``-XX:+ExitOnOutOfMemoryError``); the watchdog starts it again, and a photo is tagged with
the new key. Prints one "front-end:" line with the figures.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import requests

from client.config import read_properties, read_server_config
from client.keys import KEY_FILE, bearer, read_keys
from project import SERVER_CONFIG
from scripts import serve
from scripts.serve import (
    WATCHDOG_LOG, config_on_free_ports, running_server, running_watchdog, start_server, start_watchdog,
    stop_server, wait_until_ready,
)
from tests.test_serving import scene, shipped_store

# Far below the heap config.properties gives (its idle front end uses ~40 MiB of heap), so that a few bodies
# reach the bound in seconds.
TINY_HEAP = "-Xmx96m"
BODY = b"a&" * (29 * 2**20 // 2)  # 29 MiB: under max_request_size (30 MiB), so the decoder reads it all
SENDERS = 3
FLOOD_LIMIT_S = 120  # the JVM must exit within this; the flood stops then in any case
RESTART_LIMIT_S = 120


def tiny_heap_config(store: Path, folder: Path) -> Path:
    """config.properties on free ports with its vmargs, the heap limit replaced by ``TINY_HEAP``."""
    vmargs = read_properties(SERVER_CONFIG)["vmargs"].split()
    assert "-XX:+ExitOnOutOfMemoryError" in vmargs, "config.properties' vmargs must make the JVM exit on OOM"
    vmargs = [arg for arg in vmargs if not arg.startswith("-Xmx")] + [TINY_HEAP]
    lines = [f"vmargs={' '.join(vmargs)}" if line.startswith("vmargs=") else line
             for line in config_on_free_ports(store, server_config=SERVER_CONFIG).splitlines()]
    config_file = folder / "config.properties"
    config_file.write_text("\n".join(lines) + "\n")
    return config_file


def send_form(url: str, key: str, stop: threading.Event) -> None:
    """Posts ``BODY`` as a urlencoded form to ``url`` again and again until ``stop`` (or the server is gone)."""
    where = urlsplit(url)
    head = (f"POST {where.path} HTTP/1.1\r\nHost: {where.netloc}\r\nContent-Type: application/x-www-form-urlencoded"
            f"\r\nContent-Length: {len(BODY)}\r\nAuthorization: Bearer {key}\r\n\r\n").encode()
    while not stop.is_set():
        try:
            with socket.create_connection((where.hostname, where.port), timeout=5) as connection:
                connection.sendall(head + BODY)
                while not stop.is_set():
                    with contextlib.suppress(socket.timeout):
                        if not connection.recv(4096):
                            break
        except OSError:
            time.sleep(0.2)  # refused once the JVM is gone: wait for stop


@pytest.fixture()
def watched_server(tmp_path):
    """A tiny-heap TorchServe started as `make serve` starts it, under its watchdog; stopped as `make stop`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PYTHONPATH", raising=False)
        patch.delenv("TS_CONFIG_FILE", raising=False)
        start_dir, tmp_dir = tmp_path / "start", tmp_path / "tmp"
        for made in (start_dir, tmp_dir):
            made.mkdir()
        config_file = tiny_heap_config(shipped_store(tmp_path), tmp_path)
        config = read_server_config(config_file)
        try:
            server = start_server(config_file, start_dir=start_dir, tmp_dir=tmp_dir)
            wait_until_ready(config, key_file=start_dir / KEY_FILE, server=server, log_dir=start_dir / "logs",
                             timeout=300)
            watchdog = start_watchdog(config_file, start_dir=start_dir, tmp_dir=tmp_dir)
            log, deadline = start_dir / WATCHDOG_LOG, time.monotonic() + 60
            while "watching TorchServe" not in log.read_text():  # its imports done, its SIGTERM handler set
                assert time.monotonic() < deadline and watchdog.is_running(), log.read_text()
                time.sleep(0.1)
            yield config, start_dir, tmp_dir, server, watchdog
        finally:
            stop_server(start_dir=start_dir, tmp_dir=tmp_dir)


def test_a_form_flood_ends_in_an_oom_exit_and_the_watchdog_restarts_the_server(watched_server):
    config, start_dir, tmp_dir, server, watchdog = watched_server
    old_key = read_keys(start_dir / KEY_FILE).inference
    stop, peak = threading.Event(), [server.memory_info().rss]
    senders = [threading.Thread(target=send_form, args=(config.predictions_url, old_key, stop), daemon=True)
               for _ in range(SENDERS)]
    began = time.monotonic()
    for sender in senders:
        sender.start()
    try:
        while server.is_running() and server.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() - began < FLOOD_LIMIT_S, f"{TINY_HEAP} outlived {FLOOD_LIMIT_S} s of flood"
            with contextlib.suppress(psutil.Error):
                peak[0] = max(peak[0], server.memory_info().rss)
            time.sleep(0.05)
        exited_at = time.monotonic()
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=10)
    console = (start_dir / "logs" / "console.log").read_text(errors="replace")
    assert "OutOfMemoryError" in console, console[-2000:]

    new = None
    while new is None or new.pid == server.pid:
        assert time.monotonic() - exited_at < RESTART_LIMIT_S, (start_dir / WATCHDOG_LOG).read_text()
        time.sleep(0.05)
        new = running_server(tmp_dir)
    restarted_at = time.monotonic()
    wait_until_ready(config, key_file=start_dir / KEY_FILE, server=new, log_dir=start_dir / "logs",
                     timeout=RESTART_LIMIT_S)
    ready_at = time.monotonic()

    new_key = read_keys(start_dir / KEY_FILE).inference
    image, classes = scene(8100)
    answer = requests.post(config.predictions_url, data=image,
                           headers={"Content-Type": "image/jpeg", **bearer(new_key)}, timeout=120)
    assert answer.status_code == 200, answer.text[:300]
    assert new_key != old_key and answer.json()["tags"]
    assert running_watchdog(start_dir=start_dir, tmp_dir=tmp_dir).pid == watchdog.pid
    log = (start_dir / WATCHDOG_LOG).read_text()
    assert "exited without `make stop`" in log and "restart 1: TorchServe" in log, log
    print(f"\nfront-end: {TINY_HEAP}, {SENDERS} senders of {len(BODY) / 2**20:.0f} MiB urlencoded bodies: "
          f"OOM exit after {exited_at - began:.1f} s (peak RSS {peak[0] / 2**20:.0f} MiB); exit -> restarted "
          f"{restarted_at - exited_at:.1f} s -> ready {ready_at - exited_at:.1f} s; photo tagged with the new key "
          f"(HTTP {answer.status_code}, {len(answer.json()['tags'])} tags, {len(classes)} drawn)")


def test_make_stop_stops_the_watchdog_first(watched_server):
    config, start_dir, tmp_dir, server, watchdog = watched_server
    stop_server(start_dir=start_dir, tmp_dir=tmp_dir)
    assert not watchdog.is_running() or watchdog.status() == psutil.STATUS_ZOMBIE
    time.sleep(2)  # more than the watchdog's look interval: nothing starts the server again
    assert running_server(tmp_dir) is None
    assert "stopped by `make stop`" in (start_dir / WATCHDOG_LOG).read_text()


def test_the_watchdog_gives_up_after_max_restarts_exits_a_minute(tmp_path, monkeypatch, capsys):
    """A front end that will not start again (here: start_server refuses each time) is left down after
    ``max_restarts`` tries within a minute, not restarted in a loop; each try is logged."""
    config_file = tmp_path / "config.properties"
    config_file.write_text(config_on_free_ports(tmp_path, server_config=SERVER_CONFIG))
    tries = []

    def refuse(*args, **kwargs):
        tries.append(time.monotonic())
        raise serve.ServerError("torchserve did not start")

    monkeypatch.setattr(serve, "running_server", lambda tmp_dir=None: None)
    monkeypatch.setattr(serve, "start_server", refuse)
    monkeypatch.setattr(serve.signal, "signal", lambda *args: None)  # pytest keeps its own SIGTERM handling
    assert serve.watch(config_file, start_dir=tmp_path, tmp_dir=tmp_path, max_restarts=2) == 1
    log = capsys.readouterr().out
    assert len(tries) == 2 and log.count("failed: torchserve did not start") == 2
    assert "3 exits within a minute: giving up" in log
