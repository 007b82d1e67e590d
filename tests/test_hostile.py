"""Hostile requests against the real TorchServe: each kind, sent in the same burst as three good requests,
gets its own 4xx JSON error while every good neighbour is tagged (no 503 for the batch, no dead worker).

The server is the one of ``tests/test_serving.py`` (its fixture, for this module: the shipped archive built
from the repository, token authorization on, free loopback ports).
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from typing import Callable

import pytest
import requests
from PIL import Image

from test_serving import Server, at_once, bearer, scene, server  # noqa: F401  (server: the module's fixture)

GOOD_NEIGHBOURS = 3


def post_jpeg(server: Server, image: bytes) -> requests.Response:
    return server.post(data=image, headers={"Content-Type": "image/jpeg"})


def deep_json(body: bytes, content_type: str = "application/json") -> Callable[[Server], requests.Response]:
    return lambda server: server.post(data=body, headers={"Content-Type": content_type})


def json_text(text: str) -> Callable[[Server], requests.Response]:
    """A JSON body written by hand (NaN, Infinity and 400-digit numbers are not what requests writes)."""
    return lambda server: server.post(data=text.encode(), headers={"Content-Type": "application/json"})


def icon_claiming(width: int, height: int) -> bytes:
    """An .ico whose PNG picture's header claims ``width`` x ``height`` (it holds 16x16 pixels)."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "green").save(buffer, "PNG")
    png = buffer.getvalue()
    header = png[12:16] + struct.pack(">II", width, height) + png[24:29]
    png = png[:12] + header + struct.pack(">I", zlib.crc32(header)) + png[33:]
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22) + png


def hostile_calls(image: bytes) -> dict[str, tuple[Callable[[Server], requests.Response], int, str]]:
    """Each hostile kind: the call, and the status and error code it must get."""
    encoded = base64.b64encode(image).decode("ascii")
    return {
        "[ x 200000": (deep_json(b"[" * 200_000), 400, "bad_json"),
        "[ x 200000, charset": (deep_json(b"[" * 200_000, "application/json; charset=utf-8"), 400, "bad_json"),
        '{"data": x 50000': (deep_json(b'{"data":' * 50_000), 400, "bad_json"),
        "400-digit threshold": (json_text(f'{{"data": "{encoded}", "threshold": {"9" * 400}}}'), 422,
                                "bad_parameter"),
        "NaN threshold": (json_text(f'{{"data": "{encoded}", "threshold": NaN}}'), 422, "bad_parameter"),
        "Infinity threshold": (json_text(f'{{"data": "{encoded}", "threshold": Infinity}}'), 422, "bad_parameter"),
        "list threshold": (json_text(f'{{"data": "{encoded}", "threshold": [0.5]}}'), 422, "bad_parameter"),
        "object threshold": (json_text(f'{{"data": "{encoded}", "threshold": {{"x": 1}}}}'), 422, "bad_parameter"),
        "describe header": (lambda server: server.post(data=image, headers={"Content-Type": "image/jpeg",
                                                                            "describe": "True"}),
                            400, "predictions_only"),
        # The front end itself sets the "explain" header of a request: True here, False on /predictions.
        "POST /explanations": (lambda server: requests.post(
            f"{server.config.inference_url}/explanations/tagger", data=image,
            headers={"Content-Type": "image/jpeg", **bearer(server.keys().inference)}), 400, "predictions_only"),
        ".ico holding a 7000x7000 PNG": (
            lambda server: server.post(files={"data": ("x.ico", icon_claiming(7000, 7000), "image/x-icon")}),
            413, "too_many_pixels"),
        "two files": (lambda server: server.post(files={"a": ("a.jpg", image, "image/jpeg"),
                                                        "b": ("b.jpg", image, "image/jpeg")}),
                      400, "too_many_images"),
    }


@pytest.mark.parametrize("kind", list(hostile_calls(b"")))
def test_a_hostile_request_does_not_fail_its_neighbours(server, kind):
    image, _ = scene(6000, width=320, height=240)
    call, status, error = hostile_calls(image)[kind]
    good = [
        lambda: post_jpeg(server, image),
        # curl -F data=@x.jpg -F note=holiday: the ordinary form field is ignored
        lambda: server.post(files={"data": ("x.jpg", image, "image/jpeg")}, data={"note": "holiday"}),
        lambda: server.post(json={"data": base64.b64encode(image).decode("ascii"), "format": "list"}),
    ]
    assert len(good) == GOOD_NEIGHBOURS
    hostile, *neighbours = at_once(lambda: call(server), *good)
    assert [a.status_code for a in neighbours] == [200] * GOOD_NEIGHBOURS, [a.text[:200] for a in neighbours]
    assert neighbours[0].json()["width"] == neighbours[1].json()["width"] == 320
    assert neighbours[2].json() == neighbours[0].json()["tags"]
    assert hostile.status_code == status, hostile.text[:300]
    assert hostile.json()["error"] == error and hostile.json()["message"]


def workers(server: Server) -> set[int]:
    return {p.pid for p in server.process.children(recursive=True) if "model_service_worker" in " ".join(p.cmdline())}


def test_the_workers_live_on_after_the_hostile_bursts(server):
    image, _ = scene(6001)
    before = workers(server)
    deep = hostile_calls(image)['{"data": x 50000'][0]
    answers = at_once(*[lambda: deep(server)] * 4, *[lambda: post_jpeg(server, image)] * 4)
    assert [a.status_code for a in answers] == [400] * 4 + [200] * 4
    assert before and workers(server) == before
