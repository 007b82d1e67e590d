"""The page of ``make page`` in a real browser (Debian's Chromium, driven by Playwright) before the real TorchServe.

The server is the one of ``tests/test_serving.py`` (its fixture, for this module: the shipped archive, token
authorization on, free loopback ports); the page server is ``python -m client.page`` as a user starts it, pointed
at that server's config.properties and key file. Photos go in through the page's file input, as a user's would.
TAGGER_PAGE_SCREENSHOT=path saves a screenshot of the page with its results there.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, sync_playwright

from client.keys import KEY_FILE
from client.page import STATIC_FILES, PageServer, PageSettings
from client.tag import describe_refusal
from common.draw import label_color
from project import ROOT
from scripts.serve import free_ports
# server: test_serving's module fixture, so this module starts a TorchServe of its own.
from test_serving import CALL_TIMEOUT_S, Server, requests_received, scene, server  # noqa: F401

CHROMIUM = shutil.which("chromium")
# A file name a page that read it as HTML would turn into an element.
MARKUP_NAME = "<img src=x onerror=alert(1)>.txt"
EXIF_ORIENTATION = 0x0112
MAX_CANVAS_SIDE = 1280  # page.js draws a photo at most this large
# The share of an edge of a box that must be drawn in its label's colour exactly: other boxes and labels cross
# some edges in a crowded scene, and the photo's own pixels are this colour along a line by no chance.
EDGE_DRAWN = 0.5


@pytest.fixture(scope="module")
def page_url(server: Server, tmp_path_factory) -> Iterator[str]:
    """The address of ``python -m client.page`` on a free port, in front of the module's TorchServe."""
    log = tmp_path_factory.mktemp("page") / "page.log"
    with log.open("w") as requests_log:
        process = subprocess.Popen(
            [sys.executable, "-m", "client.page", "--port", "0", "--config", str(server.config_file),
             "--key-file", str(server.start_dir / KEY_FILE)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=requests_log, text=True)
    try:
        first_line = process.stdout.readline()  # "The page: http://127.0.0.1:PORT/ (...)", once it listens
        assert first_line.startswith("The page: http://127.0.0.1:"), first_line + log.read_text()
        yield first_line.split()[2]
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Debian's Chromium: Playwright's own browser download cannot run here (and would not be offline).
    if CHROMIUM is None:
        pytest.skip("chromium is missing (apt-get install chromium): the page's browser test runs a real one")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@dataclass(frozen=True)
class Opened:
    """A page in the browser, the problems it reported (console errors, CSP refusals, script errors) and the
    URLs it requested."""

    page: Page
    problems: list[str]
    requested: list[str]


@contextlib.contextmanager
def opened(browser: Browser, url: str) -> Iterator[Opened]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    found = Opened(context.new_page(), [], [])
    found.page.on("console", lambda message: found.problems.append(f"{message.text} ({message.location['url']})")
                  if message.type == "error" else None)
    found.page.on("pageerror", lambda error: found.problems.append(str(error)))
    found.page.on("request", lambda request: found.requested.append(request.url))
    found.page.goto(url)
    try:
        yield found
    finally:
        context.close()


def edge_pixels(canvas: Locator, points: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """The RGB of the canvas's pixels at ``points``, as drawn (read back from the canvas itself)."""
    found = canvas.evaluate(
        "(canvas, points) => { const context = canvas.getContext('2d');"
        " return points.map(([x, y]) => Array.from(context.getImageData(x, y, 1, 1).data.slice(0, 3))); }",
        points)
    return [tuple(rgb) for rgb in found]


def turned(photo: bytes) -> bytes:
    """``photo`` stored a quarter turn to the left, with the EXIF orientation (6) that turns it upright again."""
    with Image.open(io.BytesIO(photo)) as upright:
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6
        buffer = io.BytesIO()
        upright.transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", quality=92, exif=exif)
    return buffer.getvalue()


def head_only(address: tuple[str, int], headers: str) -> str:
    """The whole answer to a ``POST /tag`` of ``headers`` alone: its body is never sent."""
    with socket.create_connection(address, timeout=CALL_TIMEOUT_S) as connection:
        connection.sendall(f"POST /tag HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\n{headers}\r\n".encode())
        return connection.makefile("rb").read().decode()  # to the end: the server closes the connection


def box_edges(box: list[float], scale: float) -> list[list[tuple[int, int]]]:
    """The canvas pixels that each edge of a box (lines 2 px wide or more, centred on it) covers wholly,
    corners left out."""
    x1, y1, x2, y2 = (int(value * scale) for value in box)
    rows, columns = range(y1 + 2, y2 - 1), range(x1 + 2, x2 - 1)
    return [[(x1, y) for y in rows], [(x2, y) for y in rows], [(x, y1) for x in columns], [(x, y2) for x in columns]]


def test_photos_dropped_at_once_come_back_with_their_boxes_and_the_apis_tags(browser, server, page_url,
                                                                            tmp_path):
    photos = {"small.jpg": scene(7301)[0], "large.jpg": scene(7302, width=1600, height=1200)[0],
              "turned.jpg": turned(scene(7304, width=400, height=300)[0])}
    files = []
    for name, data in photos.items():
        files.append(tmp_path / name)
        files[-1].write_bytes(data)
    files.append(tmp_path / MARKUP_NAME)
    files[-1].write_text("a shopping list, not a photo\n")
    # What the REST API answers for the same uploads (the page sends each as a multipart file, as client.tag).
    rest = {name: server.post(files={"data": (name, data, "image/jpeg")}) for name, data in photos.items()}
    for name, answer in rest.items():
        assert answer.status_code == 200 and answer.json()["detections"], f"{name}: {answer.text}"
    text_answer = server.post(files={"data": (MARKUP_NAME, files[-1].read_bytes(), "text/plain")})
    assert 400 <= text_answer.status_code < 500, text_answer.text

    with opened(browser, page_url) as browsed:
        page = browsed.page
        page.set_input_files("#files", [str(file) for file in files])
        page.wait_for_function(
            "count => { const views = document.querySelectorAll('.photo');"
            " return views.length === count && [...views].every(view => view.dataset.state !== 'pending'); }",
            arg=len(files), timeout=CALL_TIMEOUT_S * 1000)
        if os.environ.get("TAGGER_PAGE_SCREENSHOT"):
            page.screenshot(path=os.environ["TAGGER_PAGE_SCREENSHOT"], full_page=True)

        views = page.locator(".photo")
        assert views.locator(".name").all_text_contents() == [file.name for file in files]
        for index, (name, answer) in enumerate(rest.items()):
            view, expected = views.nth(index), answer.json()
            assert view.get_attribute("data-state") == "done", view.locator(".status").text_content()
            assert view.locator(".tags li").all_text_contents() == expected["tags"]
            canvas = view.locator("canvas")
            width = canvas.evaluate("canvas => canvas.width")
            scale = width / expected["width"]
            # Drawn upright as the server saw it (turned.jpg: 400 wide), at its size or shrunk.
            assert width == min(expected["width"], MAX_CANVAS_SIDE)
            for tag, chip in zip(expected["tags"], view.locator(".tags li").all()):
                color = label_color(tag)  # the colour of `python -m client.tag --draw`
                assert chip.evaluate("chip => getComputedStyle(chip).backgroundColor") == "rgb({}, {}, {})".format(
                    *color)
                edges = [edge_pixels(canvas, edge) for detection in expected["detections"]
                         if detection["label"] == tag for edge in box_edges(detection["box"], scale)]
                drawn = max(pixels.count(color) / len(pixels) for pixels in edges)
                assert drawn >= EDGE_DRAWN, f"{name}: {tag}'s boxes drawn in {color} on {drawn:.0%} of an edge"

        refused = views.nth(len(photos))
        assert refused.get_attribute("data-state") == "failed"
        assert refused.locator(".status").text_content() == describe_refusal(text_answer.status_code,
                                                                              text_answer.text)
        assert refused.locator("img").count() == 0  # the name was shown as text
        # No console error (a CSP refusal, a failed script) but Chromium's note on the refused upload's status.
        problems = [problem for problem in browsed.problems if not problem.endswith(f"({page_url}tag)")]
        assert not problems, problems
        assert all(url.startswith(page_url) for url in browsed.requested), browsed.requested


def test_the_page_never_holds_the_key(server, page_url):
    key = server.keys().inference
    for path in [*STATIC_FILES, "/settings"]:
        answer = requests.get(page_url.rstrip("/") + path, timeout=CALL_TIMEOUT_S)
        assert answer.status_code == 200 and answer.content, path
        assert key not in answer.text, path
    assert "innerHTML" not in (ROOT / "client" / "page.js").read_text()  # answers are set as text only
    for path in ["/key_file.json", "/client/keys.py", "/../key_file.json", "/config.properties", "/page.py"]:
        answer = requests.get(page_url.rstrip("/") + path, timeout=CALL_TIMEOUT_S)
        assert answer.status_code == 404 and key not in answer.text, path


def test_the_page_server_forwards_torchserves_answers_as_they_are(server, page_url):
    tag = page_url + "tag"
    image = scene(7303)[0]
    upload = {"files": {"data": ("scene.jpg", image, "image/jpeg")}}
    for headers in ({}, {"X-Score-Threshold": "0"}, {"X-Score-Threshold": "2"}, {"X-Tag-Format": "list"}):
        direct = server.post(headers=headers, **upload)
        proxied = requests.post(tag, headers=headers, timeout=CALL_TIMEOUT_S, **upload)
        assert (proxied.status_code, proxied.json()) == (direct.status_code, direct.json()), headers
    # The list format is the default answer's tags.
    assert proxied.json() == requests.post(tag, **upload, timeout=CALL_TIMEOUT_S).json()["tags"]


def test_the_page_server_refuses_what_it_must_not_pass_on(server, page_url):
    tag = page_url + "tag"
    host, port = page_url.split("/")[2].split(":")
    before = requests_received(server.metrics_url)
    # Another site's page (a browser sends its Origin), or a DNS name rebound to 127.0.0.1, may not spend the key.
    other_site = requests.post(tag, data=b"x", headers={"Origin": "http://example.com"}, timeout=CALL_TIMEOUT_S)
    rebound = requests.post(tag, data=b"x", headers={"Host": f"example.com:{port}"}, timeout=CALL_TIMEOUT_S)
    assert (other_site.status_code, other_site.json()["error"]) == (403, "forbidden_origin")
    assert (rebound.status_code, rebound.json()["error"]) == (403, "forbidden_host")
    # A body over max_request_size is refused from its Content-Length, before a byte of it is read.
    limit = int(requests.get(page_url + "settings", timeout=CALL_TIMEOUT_S).json()["max_request_size"])
    answer = head_only((host, int(port)), f"Content-Type: image/jpeg\r\nContent-Length: {limit + 1}\r\n")
    assert answer.startswith("HTTP/1.0 413") and '"too_large"' in answer, answer
    assert requests_received(server.metrics_url) == before  # none of them reached TorchServe


def test_the_page_says_why_when_torchserve_cannot_be_asked(tmp_path):
    key_file = tmp_path / KEY_FILE
    settings = PageSettings(predictions_url=f"http://127.0.0.1:{free_ports(1)[0]}/predictions/tagger",
                            model_name="tagger", key_file=key_file, max_request_size=1024, timeout_s=10)
    with PageServer(("127.0.0.1", 0), settings=settings) as page:
        threading.Thread(target=page.serve_forever, daemon=True).start()
        tag = f"http://127.0.0.1:{page.server_address[1]}/tag"
        try:
            no_key = requests.post(tag, data=b"photo", headers={"Content-Type": "image/jpeg"}, timeout=10)
            key_file.write_text(json.dumps({name: {"key": "k", "expiration time": "2026-11-26T07:48:42.7Z"}
                                            for name in ("inference", "management", "API")}))
            no_server = requests.post(tag, data=b"photo", headers={"Content-Type": "image/jpeg"}, timeout=10)
            unsized = head_only(page.server_address[:2], "Transfer-Encoding: chunked\r\n")
        finally:
            page.shutdown()
    assert (no_key.status_code, no_key.json()["error"]) == (503, "no_key")
    assert f"{key_file} not found" in no_key.json()["message"]
    assert (no_server.status_code, no_server.json()["error"]) == (502, "unreachable")
    assert "is TorchServe running? (make serve)" in no_server.json()["message"]
    assert unsized.startswith("HTTP/1.0 411") and '"length_required"' in unsized, unsized
