"""The client's parts that need no server: key files, error lines, drawing, and its refusals.

The client against the real TorchServe is tested in test_serving.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from ts.model_server import load_properties

from client.config import ServerConfig, ServerConfigError, read_properties, read_server_config
from client.keys import KeyFileError, read_keys
from client.tag import RetryPolicy, TagResult, describe_refusal, format_result, is_retryable, main, tag_image
from common.draw import DrawingFolder, label_color
from project import ROOT, SERVER_CONFIG


# The shape TorchServe 0.12 writes (its key names, nanosecond times).
KEY_FILE = {
    "management": {"key": "wncYCHzG", "expiration time": "2026-11-26T07:48:35.291173274Z"},
    "inference": {"key": "M1KNj606", "expiration time": "2026-11-26T07:48:42.786355935Z"},
    "API": {"key": "t-entEPA"},
}


def run_client(*args, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "client.tag", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# A stand-in for the tagger: every upload is answered with this one detection (the real server is test_serving's).
STAND_IN_ANSWER = {"tags": ["red circle"], "width": 64, "height": 48,
                   "detections": [{"label": "red circle", "score": 0.9, "box": [8, 8, 40, 40]}]}

# TorchServe 0.12's own answers (frontend WorkerThread/BatchAggregator -> RestJob.sendError -> NettyUtils.sendError,
# an ErrorResponse printed by Gson with 2-space indents and a newline): the worker died with the request's batch,
# or was killed for memory (413 mapped to 507); no worker could take the request.
WORKER_DIED = (500, {"code": 500, "type": "InternalServerException", "message": "Worker died."})
WORKER_KILLED_FOR_MEMORY = (507, {"code": 507, "type": "InternalServerException", "message": "Worker died."})
NO_WORKER = (503, {"code": 503, "type": "ServiceUnavailableException",
                   "message": 'Model "tagger" has no worker to serve inference request. Please use scale workers API '
                              "to add workers. If this is a sequence inference, please check if it is closed, or "
                              "expired; or exceeds maxSequenceJobQueueSize"})
# The handler's own answer for an image the model failed on (handler/tagger_handler.py): not TorchServe's.
INFERENCE_FAILED = (500, {"error": "inference_failed", "message": "the model failed on this image (RuntimeError: x)"})
DROPPED = "close the connection without an answer"  # a server going down mid-request


class StandInServer:
    """A local HTTP server answering each upload with the next of ``script`` (a status and JSON body, or
    DROPPED), then with the stand-in tagger's 200 answer; ``requests`` counts the uploads."""

    def __init__(self, script: list):
        self.script = script
        self.requests = 0
        stand_in = self

        class Answer(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                stand_in.requests += 1
                step = stand_in.script.pop(0) if stand_in.script else (200, STAND_IN_ANSWER)
                if step == DROPPED:
                    self.close_connection = True
                    return
                status, answer = step
                body = (json.dumps(answer, indent=2) + "\n").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/predictions/tagger"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in():
    """Starts a StandInServer with the answers given; each is closed when the test ends."""
    servers: list[StandInServer] = []

    def start(*script) -> StandInServer:
        servers.append(StandInServer(list(script)))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def stand_in_url(stand_in):
    return stand_in().url


# Retries as the client makes them, without the waits of the default policy.
QUICK_RETRIES = RetryPolicy(retries=3, first_delay=0.01, max_delay=0.02)


def test_read_keys_parses_torchserve_key_file(tmp_path):
    path = tmp_path / "key_file.json"
    path.write_text(json.dumps(KEY_FILE, indent=2))
    keys = read_keys(path)
    assert (keys.inference, keys.management, keys.api) == ("M1KNj606", "wncYCHzG", "t-entEPA")
    assert keys.inference_expires == datetime(2026, 11, 26, 7, 48, 42, tzinfo=timezone.utc)
    assert keys.management_expires == datetime(2026, 11, 26, 7, 48, 35, tzinfo=timezone.utc)


def test_read_keys_refuses_missing_and_foreign_files(tmp_path):
    with pytest.raises(KeyFileError, match="not found.*make serve"):
        read_keys(tmp_path / "key_file.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"inference": {"key": "abc"}}')
    with pytest.raises(KeyFileError, match="not a TorchServe key file"):
        read_keys(broken)
    broken.write_text("not json")
    with pytest.raises(KeyFileError, match="not a TorchServe key file"):
        read_keys(broken)


def test_describe_refusal_names_the_error_and_what_to_do():
    tagger = json.dumps({"error": "too_many_pixels", "message": "the image has 48000000 pixels, over 40000000"})
    assert describe_refusal(413, tagger) == "HTTP 413 too_many_pixels: the image has 48000000 pixels, over 40000000"
    token = json.dumps({"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed."})
    assert describe_refusal(400, token).startswith("HTTP 400 InvalidKeyException: Token Authorization failed.")
    assert "make serve" in describe_refusal(400, token)
    assert "max_request_size" in describe_refusal(413, "")
    assert describe_refusal(502, "<html>\n bad gateway </html>") == "HTTP 502: <html> bad gateway </html>"


def test_format_result_prints_tags_then_detections():
    response = {"tags": ["red circle"], "width": 10, "height": 10,
                "detections": [{"label": "red circle", "score": 0.912, "box": [1.2, 2.0, 8.7, 9.0]}]}
    lines = format_result(TagResult(Path("a.jpg"), response=response)).splitlines()
    assert lines[0] == "a.jpg: red circle"
    assert lines[1].split() == ["red", "circle", "0.91", "[1,", "2,", "9,", "9]"]
    assert format_result(TagResult(Path("a.jpg"), response=["red circle"])) == 'a.jpg: ["red circle"]'
    assert format_result(TagResult(Path("b.jpg"), error="HTTP 400 empty: x")) == "b.jpg: error: HTTP 400 empty: x"


def test_draw_detections_outlines_each_box_in_its_label_color(tmp_path):
    source = tmp_path / "scene.png"  # lossless: the drawing's colors are exact
    Image.new("RGB", (200, 150), (128, 128, 128)).save(source)
    detections = [{"label": "red circle", "score": 0.9, "box": [40, 60, 120, 140]},
                  {"label": "blue square", "score": 0.8, "box": [130, 10, 190, 70]}]
    drawn = DrawingFolder(tmp_path / "out").draw(source, detections)
    assert drawn == tmp_path / "out" / "scene.png"
    with Image.open(drawn) as image:
        assert image.size == (200, 150)
        assert image.getpixel((40, 100)) == label_color("red circle")  # left edge of the first box
        assert image.getpixel((190, 40)) == label_color("blue square")  # right edge of the second box
        assert image.getpixel((80, 100)) == (128, 128, 128)  # inside a box: untouched
    assert label_color("red circle") != label_color("blue square")


def test_draw_detections_uses_the_exif_rotated_frame(tmp_path):
    """The server turns an image by its EXIF orientation before detecting: boxes are in the turned frame."""
    stored = Image.new("RGB", (120, 80), (128, 128, 128))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: 80 wide, 120 high
    source = tmp_path / "phone.png"
    stored.save(source, exif=exif)
    drawn = DrawingFolder(tmp_path / "drawn").draw(source, [{"label": "star", "score": 0.7,
                                                             "box": [10, 90, 70, 115]}])
    with Image.open(drawn) as image:
        assert image.size == (80, 120)
        assert image.getpixel((40, 115)) == label_color("star")


def test_draw_detections_falls_back_to_png_for_unwritable_suffixes(tmp_path):
    source = tmp_path / "scene.dng"  # a camera's raw file: Pillow writes no such format
    Image.new("RGB", (64, 64)).save(source, format="JPEG")
    drawn = DrawingFolder(tmp_path / "out").draw(source, [])
    assert drawn == tmp_path / "out" / "scene.png" and Image.open(drawn).format == "PNG"


def test_cli_without_a_key_file_says_where_it_comes_from(tmp_path):
    result = run_client("a.jpg", "--key-file", tmp_path / "key_file.json")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"tag: {tmp_path / 'key_file.json'} not found: TorchServe writes it in the folder it starts in "
        "(make serve) and deletes it when it stops"
    ]


def test_cli_reports_each_failed_image_and_exits_1(tmp_path):
    (tmp_path / "key_file.json").write_text(json.dumps(KEY_FILE))
    image = tmp_path / "a.jpg"
    Image.new("RGB", (32, 32)).save(image)
    url = f"http://127.0.0.1:{unused_port()}/predictions/tagger"
    result = run_client(image, tmp_path / "missing.jpg", "--url", url, "--key-file", tmp_path / "key_file.json",
                        "--retries", 1)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"{image}: error: gave up after 2 tries: cannot reach {url}: is TorchServe running? (make serve)",
        f"{tmp_path / 'missing.jpg'}: error: cannot read {tmp_path / 'missing.jpg'}: No such file or directory",
    ]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--draw", "out", "--format", "list"], "--draw needs the boxes of the dict format"),
    (["--threshold", "1.5"], "--threshold must be from 0 to 1, got 1.5"),
    (["--format", "xml"], "invalid choice: 'xml'"),
    (["--retries", "-1"], "--retries must be 0 or more, got -1"),
])
def test_cli_refuses_bad_arguments_in_one_line(args, message):
    result = run_client("a.jpg", *args)
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]


def test_server_config_is_read_from_config_properties(tmp_path):
    config = read_server_config(SERVER_CONFIG)
    assert config.predictions_url == "http://127.0.0.1:8080/predictions/tagger"
    assert (config.archive, config.model_name) == (ROOT / "archive" / "tagger.mar", "tagger")
    elsewhere = read_server_config(SERVER_CONFIG, start_dir=tmp_path)
    assert elsewhere.archive == tmp_path / "archive" / "tagger.mar"
    named = tmp_path / "named.properties"
    named.write_text("inference_address=http://127.0.0.1:9\nmanagement_address=http://127.0.0.1:10\n"
                     "model_store=/srv/store\nload_models=photos=tagger.mar\n")
    assert read_server_config(named) == ServerConfig(inference_url="http://127.0.0.1:9",
                                                     management_url="http://127.0.0.1:10",
                                                     archive=Path("/srv/store/tagger.mar"), model_name="photos")
    named.write_text("inference_address=http://127.0.0.1:9\n")
    with pytest.raises(ServerConfigError, match="has no"):
        read_server_config(named)


def test_properties_are_read_as_torchserve_reads_them(tmp_path):
    """TorchServe's launcher (ts.model_server.load_properties) and the client read key=value lines alike; the
    lines only its Java front end (java.util.Properties) reads as settings are read as Java reads them."""
    assert read_properties(SERVER_CONFIG) == load_properties(str(SERVER_CONFIG))
    common = tmp_path / "common.properties"
    common.write_text("# a comment\n\n   \ninference_address = http://127.0.0.1:9  \n  model_store=  /srv/a=b\n"
                      "\t# indented comment\nload_models=photos=tagger.mar,other.mar\nempty=\n  vmargs =-Xmx1g -Dx=1\n")
    assert read_properties(common) == load_properties(str(common)) == {
        "inference_address": "http://127.0.0.1:9", "model_store": "/srv/a=b",
        "load_models": "photos=tagger.mar,other.mar", "empty": "", "vmargs": "-Xmx1g -Dx=1"}
    java_only = tmp_path / "java.properties"
    java_only.write_text("! a comment\nmodel_store: /srv/store\nload_models tagger.mar\n"
                         "inference_address=http://127.0.0.1:\\\n    8080\n"
                         "name=a\\tb\\u00e9\\=\\\\\n# end=x \\\nlast=1")
    assert read_properties(java_only) == {"model_store": "/srv/store", "load_models": "tagger.mar",
                                          "inference_address": "http://127.0.0.1:8080", "name": "a\tb\u00e9=\\",
                                          "last": "1"}
    java_only.write_text("name=\\u00zz\n")
    with pytest.raises(ServerConfigError, match="escape"):
        read_properties(java_only)


def test_client_reads_the_projects_config_from_any_folder_without_torchserve(tmp_path):
    """The client needs requests and Pillow only: it imports and reads config.properties with TorchServe's (and
    torch's) packages blocked, and finds the project's file, not one in the folder it runs in."""
    (tmp_path / "config.properties").write_text("inference_address=http://127.0.0.1:9\n")
    code = ("import sys; sys.modules['ts'] = None; sys.modules['torch'] = None\n"
            "import client.tag\n"
            "from client.config import read_server_config\n"
            "config = read_server_config()\n"
            "print(config.predictions_url, config.archive)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["http://127.0.0.1:8080/predictions/tagger", str(ROOT / "archive" / "tagger.mar")]


def test_draw_into_the_inputs_folder_writes_beside_the_originals(tmp_path, stand_in_url, capsys):
    """`--draw photos/` with photos/*.jpg: each drawn copy is <stem>.tagged.jpg, the originals keep their bytes."""
    (tmp_path / "key_file.json").write_text(json.dumps(KEY_FILE))
    photos = tmp_path / "photos"
    photos.mkdir()
    originals = {}
    for name, color in [("a.jpg", (200, 30, 30)), ("b.jpg", (30, 200, 30)), ("a.tagged.jpg", (30, 30, 200))]:
        Image.new("RGB", (64, 48), color).save(photos / name, quality=90)
        originals[photos / name] = (photos / name).read_bytes()
    inputs = sorted(originals)
    status = main([*map(str, inputs), "--draw", str(photos), "--url", stand_in_url,
                   "--key-file", str(tmp_path / "key_file.json")])
    assert status == 0
    assert {path: path.read_bytes() for path in inputs} == originals
    drawn_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  drawn: ")]
    # a.tagged.jpg is itself an input, so a.jpg's copy is numbered past it.
    assert drawn_lines == [
        f"  drawn: {photos / 'a.tagged-2.jpg'} ({photos / 'a.jpg'} is taken: no file is written over)",
        f"  drawn: {photos / 'a.tagged.tagged.jpg'} ({photos / 'a.tagged.jpg'} is taken: no file is written over)",
        f"  drawn: {photos / 'b.tagged.jpg'} ({photos / 'b.jpg'} is taken: no file is written over)",
    ]
    with Image.open(photos / "b.tagged.jpg") as drawn:  # the box's left edge is drawn over b's green
        assert drawn.size == (64, 48)
        edge, green = drawn.getpixel((8, 30)), (30, 200, 30)
        assert sum(abs(a - b) for a, b in zip(edge, green)) > 100, edge


def test_draw_into_another_folder_keeps_the_names(tmp_path, stand_in_url, capsys):
    (tmp_path / "key_file.json").write_text(json.dumps(KEY_FILE))
    image = tmp_path / "a.jpg"
    Image.new("RGB", (64, 48)).save(image)
    status = main([str(image), "--draw", str(tmp_path / "out"), "--url", stand_in_url,
                   "--key-file", str(tmp_path / "key_file.json")])
    assert status == 0
    assert f"  drawn: {tmp_path / 'out' / 'a.jpg'}\n" in capsys.readouterr().out


def test_draw_never_replaces_a_file_already_in_the_folder(tmp_path, stand_in_url, capsys):
    """`python -m client.tag new/IMG_1.jpg --draw photos/` where photos/IMG_1.jpg is another photo, not an input:
    it keeps its bytes, and the output says where the drawing went."""
    (tmp_path / "key_file.json").write_text(json.dumps(KEY_FILE))
    photos, new = tmp_path / "photos", tmp_path / "new"
    photos.mkdir()
    new.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(photos / "IMG_1.jpg")
    kept = (photos / "IMG_1.jpg").read_bytes()
    Image.new("RGB", (64, 48), (30, 200, 30)).save(new / "IMG_1.jpg")
    status = main([str(new / "IMG_1.jpg"), "--draw", str(photos), "--url", stand_in_url,
                   "--key-file", str(tmp_path / "key_file.json")])
    assert status == 0
    assert (photos / "IMG_1.jpg").read_bytes() == kept
    assert sorted(p.name for p in photos.iterdir()) == ["IMG_1.jpg", "IMG_1.tagged.jpg"]
    assert (f"  drawn: {photos / 'IMG_1.tagged.jpg'} ({photos / 'IMG_1.jpg'} is taken: no file is written over)\n"
            in capsys.readouterr().out)
    with Image.open(photos / "IMG_1.tagged.jpg") as drawn:  # the new photo's green, outside the box
        assert sum(abs(a - b) for a, b in zip(drawn.getpixel((56, 44)), (30, 200, 30))) < 30


def test_draw_takes_no_name_that_differs_only_in_letter_case(tmp_path, stand_in_url):
    """On a case-insensitive disk (macOS's, Windows' defaults) A.JPG and a.jpg are one file: a drawing takes no
    name that differs from a file's in the folder, or another drawing's, only in letter case."""
    (tmp_path / "key_file.json").write_text(json.dumps(KEY_FILE))
    out, first, second = tmp_path / "out", tmp_path / "first", tmp_path / "second"
    for folder in (out, first, second):
        folder.mkdir()
    Image.new("RGB", (64, 48)).save(out / "A.JPG")
    kept = (out / "A.JPG").read_bytes()
    inputs = [first / "a.jpg", first / "B.jpg", second / "b.jpg"]
    for image in inputs:
        Image.new("RGB", (64, 48), (30, 200, 30)).save(image)
    status = main([*map(str, inputs), "--draw", str(out), "--url", stand_in_url,
                   "--key-file", str(tmp_path / "key_file.json")])
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == ["A.JPG", "B.jpg", "a.tagged.jpg", "b.tagged.jpg"]
    assert (out / "A.JPG").read_bytes() == kept


def test_a_file_created_after_the_folder_was_listed_is_not_replaced(tmp_path):
    """Another program writes out/c.png between the listing of out/ and the drawing: the drawing's file is
    created exclusively, so it goes to the next name."""
    source = tmp_path / "c.png"
    Image.new("RGB", (32, 32)).save(source)
    drawings = DrawingFolder(tmp_path / "out")
    (tmp_path / "out" / "c.png").write_bytes(b"written meanwhile")
    assert drawings.draw(source, []) == tmp_path / "out" / "c.tagged.png"
    assert drawings.draw(source, []) == tmp_path / "out" / "c.tagged-2.png"
    assert (tmp_path / "out" / "c.png").read_bytes() == b"written meanwhile"


# --- retries --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [WORKER_DIED, WORKER_KILLED_FOR_MEMORY, NO_WORKER, DROPPED],
                         ids=["worker-died", "worker-killed-for-memory", "no-worker", "connection-dropped"])
def test_an_answer_that_says_nothing_about_the_image_is_tried_again(failure, stand_in, tmp_path):
    server = stand_in(failure, failure)
    image = tmp_path / "a.jpg"
    Image.new("RGB", (64, 48)).save(image)
    assert tag_image(image, url=server.url, key="k", retry=QUICK_RETRIES) == TagResult(image, response=STAND_IN_ANSWER)
    assert server.requests == 3


def test_a_refused_key_is_read_again_from_its_file_once_a_restart_wrote_a_new_one(stand_in, tmp_path):
    """TorchServe writes new keys at each start: a request retried across a restart carries the old key."""
    old_key = (400, {"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed."})
    server = stand_in(DROPPED, old_key)  # down, then up with new keys
    image, key_file = tmp_path / "a.jpg", tmp_path / "key_file.json"
    Image.new("RGB", (64, 48)).save(image)
    key_file.write_text(json.dumps(KEY_FILE))  # the key the client starts with...
    result = tag_image(image, url=server.url, key="the old key", key_file=key_file, retry=QUICK_RETRIES)
    assert result == TagResult(image, response=STAND_IN_ANSWER)  # ... is not the one the file holds now
    # Refused again with the file's key: no other key to try, so the refusal is the answer.
    server = stand_in(old_key)
    result = tag_image(image, url=server.url, key=KEY_FILE["inference"]["key"], key_file=key_file,
                       retry=QUICK_RETRIES)
    assert result.error.startswith("HTTP 400 InvalidKeyException") and server.requests == 1


def test_the_handlers_own_500_is_not_tried_again(stand_in, tmp_path):
    """inference_failed is the handler's answer for this image: sent again, it would fail again."""
    server = stand_in(INFERENCE_FAILED)
    image = tmp_path / "a.jpg"
    Image.new("RGB", (64, 48)).save(image)
    result = tag_image(image, url=server.url, key="k", retry=QUICK_RETRIES)
    assert result.error == "HTTP 500 inference_failed: the model failed on this image (RuntimeError: x)"
    assert server.requests == 1


@pytest.mark.parametrize("status, body, retryable", [
    (*WORKER_DIED, True),
    (*WORKER_KILLED_FOR_MEMORY, True),
    (*NO_WORKER, True),
    (503, {"code": 503, "type": "InternalServerException", "message": "Prediction failed"}, True),
    (507, {"code": 507, "type": "InternalServerException", "message": "Out of resources"}, True),
    (503, {"error": "busy", "message": "the model server is busy or not running; retry in a moment"}, True),
    (*INFERENCE_FAILED, False),
    (500, {"error": "response_failed", "message": "x"}, False),
    (400, {"error": "not_an_image", "message": "x"}, False),
    (413, {"error": "too_many_pixels", "message": "x"}, False),
    (400, {"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed."}, False),
    (404, {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: tagger"}, False),
    (413, "", False),
    (502, "<html>bad gateway</html>", False),
])
def test_only_torchserves_own_answers_for_its_workers_are_retryable(status, body, retryable):
    assert is_retryable(status, body if isinstance(body, str) else json.dumps(body)) is retryable


def test_the_back_off_doubles_up_to_a_bound_with_a_small_jitter():
    delays = RetryPolicy().delays()
    doubling = [0.5, 1, 2, 4, 4]  # the default first_delay, doubled up to max_delay
    assert len(delays) == len(doubling)
    assert all(base <= delay <= 1.1 * base + 1e-9 for delay, base in zip(delays, doubling)), delays
    assert RetryPolicy(retries=0).delays() == []


def test_the_cli_says_in_one_line_when_it_gives_up(stand_in, tmp_path, capsys):
    (tmp_path / "key_file.json").write_text(json.dumps(KEY_FILE))
    server = stand_in(WORKER_DIED, WORKER_DIED, WORKER_DIED)
    image = tmp_path / "a.jpg"
    Image.new("RGB", (64, 48)).save(image)
    status = main([str(image), "--url", server.url, "--key-file", str(tmp_path / "key_file.json"), "--retries", "2"])
    assert status == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{image}: error: gave up after 3 tries: HTTP 500 InternalServerException: Worker died."]
    assert server.requests == 3
