"""The front door (``make front-door``): the real nginx in front of the real TorchServe.

The server is the one of ``tests/test_serving.py`` (its fixture, for this module: the shipped archive, token
authorization on, free loopback ports); the door is rendered from that server's config.properties by
``scripts/front_door.py`` with its defaults, on a free port. Each case prints a ``front-door:`` line.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import psutil
import pytest
import requests

from client.config import read_properties
from client.keys import bearer
from scripts.front_door import DoorSettings, FrontDoorError, default_settings, door_on, nginx
from scripts.serve import free_ports
from test_serving import CALL_TIMEOUT_S, Server, scene, server  # noqa: F401  (server: the module's fixture)

try:
    nginx()
except FrontDoorError as missing:
    pytest.skip(f"{missing} (the front door's tests run the real nginx)", allow_module_level=True)

GIB = 1024 ** 3
FLOOD_BYTES = 29 * 1024 * 1024  # just under config.properties' max_request_size (30 MiB)
FLOOD_CLIENTS = 4
EMPTY_PART = b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n\r\n'


@dataclass(frozen=True)
class Door:
    """The front door of the module's server: its URL and limits."""

    url: str
    settings: DoorSettings
    model: str

    @property
    def predictions(self) -> str:
        return f"{self.url}/predictions/{self.model}"


@pytest.fixture(scope="module")
def door(server: Server, tmp_path_factory) -> Iterator[Door]:
    settings = default_settings(port=free_ports(1)[0], listen="127.0.0.1")
    with door_on(server.config_file, settings, tmp_path_factory.mktemp("front-door")):
        yield Door(f"http://127.0.0.1:{settings.port}", settings, server.config.model_name)


def upstream_requests(server: Server) -> int:
    """The requests TorchServe's front end has logged (logs/access_log.log, a line each)."""
    log = server.start_dir / "logs" / "access_log.log"
    return len(log.read_text(errors="replace").splitlines()) if log.exists() else 0


def assert_door_error(answer: requests.Response, status: int, error: str) -> None:
    assert answer.status_code == status, answer.text[:300]
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["error"] == error and answer.json()["message"], answer.text


def test_a_photo_gets_the_same_tags_through_the_door(server, door):
    image = scene(7000)[0]
    key = bearer(server.keys().inference)
    direct = server.post(data=image, headers={"Content-Type": "image/jpeg"})
    multipart = requests.post(door.predictions, files={"data": ("scene.jpg", image, "image/jpeg")}, headers=key,
                              timeout=CALL_TIMEOUT_S)
    raw = requests.post(door.predictions, data=image, headers={"Content-Type": "image/jpeg", **key},
                        timeout=CALL_TIMEOUT_S)
    ping = requests.get(f"{door.url}/ping", headers=key, timeout=CALL_TIMEOUT_S)
    print(f"front-door: photo direct/multipart/raw {direct.status_code}/{multipart.status_code}/{raw.status_code}, "
          f"tags {direct.json().get('tags')}, ping {ping.status_code}")
    assert [direct.status_code, multipart.status_code, raw.status_code] == [200] * 3
    assert multipart.json() == raw.json() == direct.json() and direct.json()["tags"]
    assert ping.json() == {"status": "Healthy"}


def test_forms_and_calls_without_a_key_never_reach_torchserve(server, door):
    image = scene(7001)[0]
    key = bearer(server.keys().inference)
    before = upstream_requests(server)
    form = requests.post(door.predictions, data={"data": "x"}, headers=key, timeout=CALL_TIMEOUT_S)
    form_spelt = requests.post(door.predictions, data=b"a=1", headers={
        **key, "Content-Type": "Application/X-WWW-Form-Urlencoded; charset=utf-8"}, timeout=CALL_TIMEOUT_S)
    no_key = requests.post(door.predictions, data=image, headers={"Content-Type": "image/jpeg"}, timeout=CALL_TIMEOUT_S)
    lower_case = requests.post(door.predictions, data=image, timeout=CALL_TIMEOUT_S, headers={
        "Content-Type": "image/jpeg", "Authorization": f"bearer {server.keys().inference}"})
    time.sleep(1)  # TorchServe logs a request when it answers it; give a stray one time to show
    arrived = upstream_requests(server) - before
    print(f"front-door: urlencoded {form.status_code}/{form_spelt.status_code}, no key {no_key.status_code}, "
          f"'bearer' {lower_case.status_code}; requests that reached TorchServe: {arrived}")
    assert_door_error(form, 415, "unsupported_media_type")
    assert_door_error(form_spelt, 415, "unsupported_media_type")
    assert_door_error(no_key, 401, "no_key")
    assert_door_error(lower_case, 401, "no_key")
    assert arrived == 0


def test_only_predictions_and_ping_are_passed(server, door):
    key = bearer(server.keys().inference)
    base = door.url
    hidden = {
        "GET /models": lambda: requests.get(f"{base}/models", headers=key, timeout=CALL_TIMEOUT_S),
        "GET /metrics": lambda: requests.get(f"{base}/metrics", timeout=CALL_TIMEOUT_S),
        "OPTIONS /": lambda: requests.options(f"{base}/", headers=key, timeout=CALL_TIMEOUT_S),
        "GET /api-description": lambda: requests.get(f"{base}/api-description", headers=key, timeout=CALL_TIMEOUT_S),
        "POST /explanations": lambda: requests.post(f"{base}/explanations/{door.model}", headers=key, data=b"x",
                                                    timeout=CALL_TIMEOUT_S),
        "POST /predictions/other": lambda: requests.post(f"{base}/predictions/other", headers=key, data=b"x",
                                                         timeout=CALL_TIMEOUT_S),
        "POST /models (register)": lambda: requests.post(f"{base}/models?url=x.mar", headers=key,
                                                         timeout=CALL_TIMEOUT_S),
    }
    statuses = {name: call().status_code for name, call in hidden.items()}
    wrong_method = requests.get(door.predictions, headers=key, timeout=CALL_TIMEOUT_S)
    print(f"front-door: hidden paths {statuses}, GET /predictions {wrong_method.status_code}")
    assert statuses == {name: 404 for name in hidden}
    assert requests.get(f"{base}/models", timeout=CALL_TIMEOUT_S).json()["error"] == "not_found"
    assert_door_error(wrong_method, 405, "method_not_allowed")


def test_a_body_over_the_archive_cap_gets_413(server, door):
    cap = int(read_properties(server.config_file)["max_request_size"])
    began = time.monotonic()
    answer = requests.post(door.predictions, data=bytes(cap + 1), timeout=CALL_TIMEOUT_S,
                           headers={"Content-Type": "image/jpeg", **bearer(server.keys().inference)})
    print(f"front-door: {cap + 1}-byte body {answer.status_code} in {time.monotonic() - began:.2f} s")
    assert_door_error(answer, 413, "too_large")


def closed_after(client: socket.socket) -> tuple[float, bytes]:
    """When the door closed ``client`` (time.monotonic()), and what it answered before."""
    answer = b""
    while chunk := client.recv(4096):
        answer += chunk
    return time.monotonic(), answer


def test_slow_clients_hold_their_share_and_are_cut_after_the_timeout(server, door):
    """As many clients as one address may have send headers and 2 bytes of a 1000-byte body, then stall (one
    trickles a third byte after a second): another request from that address gets 429 meanwhile, and nginx
    closes each stalled connection the timeout after its last byte."""
    image = scene(7003)[0]
    key = bearer(server.keys().inference)
    address = urlsplit(door.url)
    head = request_head(door.predictions, {"Content-Type": "image/jpeg", **key}, length=1000)
    before = upstream_requests(server)
    clients = [socket.create_connection((address.hostname, address.port), timeout=CALL_TIMEOUT_S)
               for _ in range(door.settings.per_client_conns)]
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(len(clients)) as pool:
        for client in clients:
            stack.enter_context(client)
            client.sendall(head + b"\xff\xd8")
        last_byte = [time.monotonic()] * len(clients)
        time.sleep(1)
        clients[0].sendall(b"\xff")  # a trickle: each byte restarts the wait
        last_byte[0] = time.monotonic()
        extra = requests.post(door.predictions, data=image, headers={"Content-Type": "image/jpeg", **key},
                              timeout=CALL_TIMEOUT_S)
        closed = list(pool.map(closed_after, clients))
    cut_after = [round(at - sent, 1) for (at, _), sent in zip(closed, last_byte)]
    statuses = {answer.split(b" ", 2)[1].decode() if answer else "no answer" for _, answer in closed}
    print(f"front-door: {len(clients)} stalled clients cut {cut_after} s after their last byte (timeout "
          f"{door.settings.timeout_s} s): {statuses}; one more from the address meanwhile: {extra.status_code}")
    assert_door_error(extra, 429, "too_many_requests")
    assert all(door.settings.timeout_s - 0.5 < cut < door.settings.timeout_s + 5 for cut in cut_after)
    assert upstream_requests(server) == before


def multipart_of_empty_fields(size: int) -> bytes:
    return EMPTY_PART * (size // len(EMPTY_PART)) + b"--b--\r\n"


def java_rss_peak(process: psutil.Process, action: Callable[[], list]) -> tuple[list, int, int]:
    """``action``'s result and the front end's RSS before it and at its peak (sampled every 0.1 s)."""
    start = peak = process.memory_info().rss
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.wait(0.1):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        return action(), start, peak
    finally:
        done.set()
        sampler.join()


def request_head(url: str, headers: dict[str, str], *, length: int) -> bytes:
    """An HTTP/1.1 POST's request line and headers, for clients that send their bodies their own way."""
    parts = urlsplit(url)
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {length}", "Connection: close",
             *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def send_whole(url: str, body: bytes, headers: dict[str, str]) -> int | str:
    """POSTs all of ``body`` whatever the door answers meanwhile (as a hostile client would, where requests
    stops at an early answer); the status, or how the connection ended."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=CALL_TIMEOUT_S) as client:
        try:
            client.sendall(request_head(url, headers, length=len(body)))
            client.sendall(body)
            status_line = client.makefile("rb").readline()
        except OSError as exc:  # the door closed before all of it was sent
            return type(exc).__name__
    return int(status_line.split()[1]) if status_line else "closed"


def test_floods_of_tiny_fields_leave_torchserve_within_its_memory(server, door):
    key = bearer(server.keys().inference)
    multipart = {"Content-Type": "multipart/form-data; boundary=b"}
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    floods = {
        "multipart of empty fields, with key": (multipart_of_empty_fields(FLOOD_BYTES), {**multipart, **key}),
        "multipart of empty fields, no key": (multipart_of_empty_fields(FLOOD_BYTES), multipart),
        "urlencoded a&a&..., with key": (b"a&" * (FLOOD_BYTES // 2), {**form, **key}),
        "urlencoded a&a&..., no key": (b"a&" * (FLOOD_BYTES // 2), form),
    }
    image = scene(7002)[0]
    tagged = server.post(data=image, headers={"Content-Type": "image/jpeg"}).json()
    first = server.process.memory_info().rss
    for name, (body, headers) in floods.items():
        began = time.monotonic()
        with ThreadPoolExecutor(FLOOD_CLIENTS) as pool:
            statuses, start, peak = java_rss_peak(server.process, lambda: list(pool.map(
                lambda _: send_whole(door.predictions, body, headers), range(FLOOD_CLIENTS))))
        print(f"front-door: {FLOOD_CLIENTS} x {len(body) / 2 ** 20:.0f} MiB {name}: statuses {statuses}, "
              f"Java RSS start {start / 2 ** 20:.0f} MiB, peak {peak / 2 ** 20:.0f} MiB, "
              f"{time.monotonic() - began:.2f} s")
        assert peak - first < GIB
        assert all(status in (400, 401, 413, 415, 429, 503) for status in statuses), statuses
    after = requests.post(door.predictions, data=image, headers={"Content-Type": "image/jpeg", **key},
                          timeout=CALL_TIMEOUT_S)
    print(f"front-door: a photo after the floods: {after.status_code} {after.json().get('tags')}")
    assert after.status_code == 200 and after.json() == tagged
