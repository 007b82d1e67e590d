"""Closed-loop load for the chaos tests (tests/test_chaos.py): clients that send JPEGs one after another, each on
its own kept-alive ``http.client`` connection (as benchmarks/bench.py's ``run_clients``), and record every
answer with its times instead of stopping at the first failure.

A client that got no HTTP answer (refused, reset, timed out) opens a new connection; one that got TorchServe's
``InvalidKeyException`` reads the key file again (a restarted TorchServe writes new keys). After any failure
it pauses ``pause_after_failure`` seconds, so a server that is down is not hammered and the 2 cores stay free
for the one that is starting.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from handler.text import shorten


@dataclass(frozen=True)
class Answer:
    """One request of the load.

    Args:
        client: which client sent it.
        sent: ``time.monotonic()`` when it was sent.
        done: ``time.monotonic()`` when its answer, or its failure, came.
        status: the HTTP status; None when no HTTP answer came (the connection was refused, reset, timed out).
        body: the body of an answer other than 200 (shortened), or the connection's error; empty for a 200.
    """

    client: int
    sent: float
    done: float
    status: int | None
    body: str

    @property
    def ok(self) -> bool:
        return self.status == 200

    def describe(self) -> str:
        return f"{self.status if self.status is not None else 'no answer'} {' '.join(self.body.split())}".strip()


class Load:
    """``clients`` closed-loop clients posting ``jpegs`` to ``url`` from ``start()`` until ``stop()``.

    Args:
        url: the prediction endpoint.
        key: returns the inference key (called at the start, and again after an ``InvalidKeyException``).
        jpegs: the images, cycled through; client n sends n, n + clients, ...
        clients: requests in flight at once.
        timeout: seconds a request may take (only a hang reaches it: TorchServe answers a stuck batch itself).
        pause_after_failure: seconds a client waits after a failed request.
    """

    def __init__(self, url: str, *, key: Callable[[], str], jpegs: list[bytes], clients: int = 8,
                 timeout: float = 300, pause_after_failure: float = 0.25) -> None:
        target = urlsplit(url)
        self._host, self._port, self._path = target.hostname, target.port, target.path
        self._key_source, self._jpegs, self.clients = key, jpegs, clients
        self._timeout, self._pause = timeout, pause_after_failure
        self._answers: list[Answer] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---- running ----

    def start(self) -> Load:
        key = self._key_source()
        self._threads = [threading.Thread(target=self._client, args=(n, key), name=f"chaos-client-{n}", daemon=True)
                         for n in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 300) -> list[Answer]:
        """Stops the clients after their request in flight; returns every answer."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        assert not stuck, f"clients still waiting for an answer after {timeout} s: {stuck}"
        return self.answers()

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _client(self, number: int, key: str) -> None:
        connection: http.client.HTTPConnection | None = None
        index = number
        try:
            while not self._stop.is_set():
                if connection is None:
                    connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
                jpeg = self._jpegs[index % len(self._jpegs)]
                index += self.clients
                sent = time.monotonic()
                try:
                    connection.request("POST", self._path, body=jpeg, headers={
                        "Content-Type": "image/jpeg", "Authorization": f"Bearer {key}"})
                    response = connection.getresponse()
                    status, text = response.status, response.read().decode(errors="replace")
                    if response.will_close:
                        connection.close()
                        connection = None
                except (OSError, http.client.HTTPException) as exc:  # refused, reset, closed, timed out
                    connection.close()
                    connection = None
                    status, text = None, f"{type(exc).__name__}: {exc}"
                body = "" if status == 200 else shorten(text, 300)
                self._record(Answer(number, sent, time.monotonic(), status, body))
                if status != 200:
                    if status == 400 and "InvalidKeyException" in text:
                        try:
                            key = self._key_source()
                        except Exception:  # noqa: BLE001 (the key file is being rewritten: the next failure reads it)
                            pass
                    self._stop.wait(self._pause)
        finally:
            if connection is not None:
                connection.close()

    def _record(self, answer: Answer) -> None:
        with self._arrived:
            self._answers.append(answer)
            self._arrived.notify_all()

    # ---- reading ----

    def answers(self, since: float = float("-inf"), until: float = float("inf")) -> list[Answer]:
        """The answers that came from ``since`` to ``until`` (``time.monotonic()``), in the order they came."""
        with self._lock:
            return [answer for answer in self._answers if since <= answer.done <= until]

    def wait_for(self, count: int, *, since: float = float("-inf"), timeout: float = 300) -> list[Answer]:
        """Waits until ``count`` answers came after ``since``; returns them. Counts answers, not seconds, so a
        phase holds as many requests on a loaded machine as on an idle one."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while (got := sum(1 for answer in self._answers if answer.done >= since)) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{got} of {count} answers after {timeout} s"
                assert any(thread.is_alive() for thread in self._threads), "every client has stopped"
                self._arrived.wait(min(left, 1.0))
        return self.answers(since)


def statuses(answers: list[Answer]) -> dict[str, int]:
    """How many answers got each status (and body, for failures): the figure a chaos test prints."""
    counts: dict[str, int] = {}
    for answer in answers:
        label = "200" if answer.ok else answer.describe()[:120]
        counts[label] = counts.get(label, 0) + 1
    return counts


def wait_until(condition: Callable[[], object], *, timeout: float, every: float = 0.1, what: str = "") -> object:
    """``condition()``'s first true value, polled every ``every`` seconds for ``timeout`` seconds at most."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what or condition}"
        time.sleep(every)
    return value
