"""Prometheus metrics on the metrics address (``/metrics``) of the TorchServe that `make serve` runs.

The server is test_serving's: the repository's config.properties (metrics_mode=prometheus, metrics.yaml) on
free ports. The worker prints its metric lines to stdout, which the front end reads beside the answers, so a
metric can arrive just after its answer: the test waits for the handler's counters while the server lives,
for at most a minute.
"""

from __future__ import annotations

import re
import time

import psutil
import requests

from tests.test_serving import CALL_TIMEOUT_S, scene, server  # noqa: F401  (server: the module's TorchServe fixture)

# 'TaggerImages{ModelName="tagger",Level="Model",Hostname="vm",} 5.0'
SAMPLE = re.compile(r'^(?P<name>\w+)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$')
LABEL = re.compile(r'(\w+)="([^"]*)"')
MODEL = {"ModelName": "tagger", "Level": "Model"}  # the dimensions of the handler's and TorchServe's model metrics


class Metrics:
    """One reading of ``/metrics``: samples by name and labels, and each metric's declared type."""

    def __init__(self, text: str) -> None:
        self.types = dict(re.findall(r"^# TYPE (\w+) (\w+)$", text, flags=re.MULTILINE))
        self.samples = [
            (m["name"], dict(LABEL.findall(m["labels"])), float(m["value"]))
            for m in map(SAMPLE.match, text.splitlines()) if m
        ]

    def value(self, name: str, **labels: str) -> float | None:
        """The sample of ``name`` whose labels include ``labels`` (None when there is none)."""
        found = [value for sample, have, value in self.samples if sample == name and labels.items() <= have.items()]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else None


def read_metrics(url: str) -> Metrics:
    answer = requests.get(url, timeout=CALL_TIMEOUT_S)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain"), answer.text
    return Metrics(answer.text)


def metrics_when(url: str, process: psutil.Process, at_least: dict[str, float], timeout: float = 60) -> Metrics:
    """The first reading in which each model metric (``MODEL``'s labels) that ``at_least`` names has reached
    its value there, read again while the server lives, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = read_metrics(url)
        values = {name: metrics.value(name, **MODEL) for name in at_least}
        if all(values[name] is not None and values[name] >= least for name, least in at_least.items()):
            return metrics
        assert process.is_running(), "TorchServe exited"
        assert time.monotonic() < deadline, f"after {timeout} s the metrics read {values}, not yet {at_least}"
        time.sleep(0.2)


def test_metrics_show_requests_latency_and_the_handlers_work(server):  # noqa: F811
    url = server.metrics_url
    # PredictionTime is the last line of a batch: once there, the start-up probe's batch is fully counted.
    before = metrics_when(url, server.process, {"PredictionTime": 0})

    answers = [server.post(data=scene(6000 + n)[0], headers={"Content-Type": "image/jpeg"}) for n in range(3)]
    refused = server.post(data=b"not an image", headers={"Content-Type": "image/jpeg"})
    assert [a.status_code for a in answers] + [refused.status_code] == [200, 200, 200, 400]
    detections = sum(len(a.json()["detections"]) for a in answers)
    assert detections > 0

    # The handler's counters: images the model ran on (the refused upload is not one) and detections reported.
    handler_counts = {"TaggerImages": 3, "TaggerDetections": detections}
    counted_before = {name: before.value(name, **MODEL) or 0 for name in handler_counts}
    after = metrics_when(url, server.process, {name: counted_before[name] + n for name, n in handler_counts.items()})
    assert {name: after.value(name, **MODEL) - counted_before[name] for name in handler_counts} == handler_counts
    assert after.types["TaggerImages"] == after.types["TaggerDetections"] == "counter"
    # The handler's stage times and TorchServe's own, of the last batch, in ms.
    for name in ("TaggerPreprocessTime", "TaggerInferenceTime", "TaggerPostprocessTime", "HandlerTime",
                 "PredictionTime"):
        assert after.types[name] == "gauge" and after.value(name, **MODEL) >= 0, name
    # TorchServe's front end: requests and their latency per model, and statuses.
    tagger = {"model_name": "tagger"}
    assert after.value("ts_inference_requests_total", **tagger) - before.value("ts_inference_requests_total", **tagger) == 4
    for name in ("ts_inference_latency_microseconds", "ts_queue_latency_microseconds"):
        assert after.value(name, **tagger) > before.value(name, **tagger), name
    assert after.value("Requests2XX") - (before.value("Requests2XX") or 0) >= 3
    assert after.value("Requests4XX") - (before.value("Requests4XX") or 0) >= 1
