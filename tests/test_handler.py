"""The TorchServe handler without a server, driven through TorchServe's own Python worker code.

Requests are encoded in the frame the Java front end sends to the worker and decoded by TorchServe's
``retrieve_msg``; ``ts.service.Service.predict`` runs the handler and encodes the answers (statuses, JSON bodies)
as the worker does, and the tests read them back. Checkpoints are real files written by ``save_checkpoint``
or by the training CLI.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import random
import shutil
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import ts
import yaml
from PIL import Image
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.protocol.otf_message_handler import retrieve_msg
from ts.service import Service
from ts.utils.util import list_classes_from_module

import handler.tagger_handler as tagger_handler_module
from benchmarks.gpu_check import BOX_TOLERANCE_PX, compare
from handler.decode import EmptyImageError, decode_image
from handler.detector import build_detector_from_config
from handler.rows import Refusal
from handler.tagger_handler import TaggerHandler
from handler.tagging import Detection
from handler.uploads import RequestError
from scripts.make_archive import build_archive
from tests.test_decode import ftyp, malformed_exif_png
from training.checkpoints import save_checkpoint
from training.presets import model_config
from training.synthetic import CLASS_NAMES, render_image

METRICS_CONFIG = Path(ts.__file__).parent / "configs" / "metrics.yaml"
END_OF_LIST = struct.pack("!i", -1)
# Answers of the untrained model keep every box (box_score_thresh 0) with scores under 0.1: a request that
# asks for threshold 0 gets boxes, the default threshold of 0.5 gets none.
LOW = {"X-Score-Threshold": "0"}


@dataclass
class Upload:
    """One HTTP request as the front end forwards it: (part name, content type, bytes) parts and headers."""

    parts: list[tuple[str, str, bytes]]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Reply:
    status: int
    phrase: str
    content_type: str
    body: object


def multipart(image: bytes, name: str = "data", headers: dict | None = None, **form: str) -> Upload:
    # A form field without a filename reaches the worker with no content type, as bytes.
    fields = [(key, "", value.encode()) for key, value in form.items()]
    return Upload([(name, "image/jpeg", image), *fields], dict(headers or {}))


def raw(image: bytes, content_type: str = "image/jpeg", headers: dict | None = None) -> Upload:
    return Upload([("body", content_type, image)], dict(headers or {}))


def json_upload(body: object, headers: dict | None = None) -> Upload:
    return Upload([("body", "application/json", json.dumps(body).encode())], dict(headers or {}))


def predict_frame(uploads: list[Upload]) -> bytes:
    """A batch in the worker protocol (``ts/protocol/otf_message_handler.py``: command I, requests, -1)."""

    def sized(data: bytes) -> bytes:
        return struct.pack("!i", len(data)) + data

    frame = b"I"
    for n, upload in enumerate(uploads):
        frame += sized(f"request-{n}".encode())
        frame += b"".join(sized(k.encode()) + sized(v.encode()) for k, v in upload.headers.items()) + END_OF_LIST
        frame += b"".join(sized(n.encode()) + sized(t.encode()) + sized(v) for n, t, v in upload.parts)
        frame += END_OF_LIST
    return frame + END_OF_LIST


class FrameReader:
    """The worker's socket, reading from a prepared frame."""

    def __init__(self, frame: bytes) -> None:
        self._stream = io.BytesIO(frame)

    def recv(self, size: int) -> bytes:
        return self._stream.read(size)


def read_replies(message: bytes) -> list[Reply]:
    """Decodes ``create_predict_response``: batch code and message, then per request id, content type,
    status, reason phrase, headers and body."""
    stream = io.BytesIO(message)

    def number() -> int:
        return struct.unpack("!i", stream.read(4))[0]

    def chunk() -> bytes:
        return stream.read(number())

    assert number() == 200, "the batch as a whole must succeed"
    chunk()
    replies = []
    while (length := number()) != -1:
        stream.read(length)
        content_type, status, phrase = chunk().decode(), number(), chunk().decode()
        for _ in range(number()):
            chunk(), chunk()
        replies.append(Reply(status, phrase, content_type, json.loads(chunk())))
    return replies


def serve(checkpoint: Path, folder: Path, handler_config: dict | None = None, gpu: int | None = None,
          batch_size: int = 8) -> Service:
    """The handler loaded as TorchServe's model loader does it, in a model folder like an unpacked .mar; ``gpu``
    is the ``gpu_id`` the front end gives a worker on a GPU machine."""
    (folder / "MAR-INF").mkdir(parents=True)
    shutil.copy(checkpoint, folder / checkpoint.name)
    (folder / "model-config.yaml").write_text(yaml.safe_dump({"batchSize": batch_size,
                                                              "handler": handler_config or {}}))
    manifest = {"runtime": "python", "model": {"modelName": "tagger", "serializedFile": checkpoint.name,
                                               "handler": "tagger_handler.py", "configFile": "model-config.yaml"}}
    (folder / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    handler = TaggerHandler()
    metrics = MetricsCacheYamlImpl(str(METRICS_CONFIG))
    metrics.model_name = "tagger"
    service = Service("tagger", str(folder), manifest, handler.handle, gpu, batch_size, True, metrics)
    handler.initialize(service.context)
    service.set_cl_socket(None)
    return service


def ask(service: Service, uploads: list[Upload]) -> list[Reply]:
    command, batch = retrieve_msg(FrameReader(predict_frame(uploads)))
    assert command == b"I"
    return read_replies(service.predict(batch))


def encode(image: Image.Image, image_format: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def noise(width: int, height: int) -> bytes:
    return encode(Image.effect_noise((width, height), 60).convert("RGB"))


def boxes_inside(detections: list[dict], width: int, height: int) -> bool:
    return all(0 <= d["box"][0] < d["box"][2] <= width and 0 <= d["box"][1] < d["box"][3] <= height
               for d in detections)


@pytest.fixture(scope="module")
def eager_checkpoint(tmp_path_factory) -> Path:
    """An untrained demo model that keeps every box, so answers have detections to check; its wide
    classifier initialisation spreads their scores (about 0.06 to 0.1) so thresholds between them matter."""
    torch.manual_seed(0)
    config = model_config("demo", len(CLASS_NAMES) + 1, box_score_thresh=0.0, cls_init_std=1.0)
    return save_checkpoint(tmp_path_factory.mktemp("eager") / "Epoch.0.pth", model=build_detector_from_config(config),
                           model_config=config, class_names=CLASS_NAMES, epoch=0)


@pytest.fixture(scope="module")
def service(eager_checkpoint, tmp_path_factory) -> Service:
    return serve(eager_checkpoint, tmp_path_factory.mktemp("model"), {"max_pixels": 1_000_000})


def test_the_handler_file_defines_exactly_one_class():
    # TorchServe's loader refuses a --handler file with more than one class.
    assert list_classes_from_module(tagger_handler_module) == [TaggerHandler]


def test_initialize_rebuilds_the_model_on_cpu(service):
    handler = service._entry_point.__self__
    assert handler.initialized and handler.device == torch.device("cpu")
    assert not handler.tagger.model.training and handler.tagger.class_names == CLASS_NAMES
    assert handler.settings.max_pixels == 1_000_000 and handler.settings.score_threshold == 0.5


def test_torch_threads_setting_sets_the_cpu_worker_threads(eager_checkpoint, tmp_path):
    before = torch.get_num_threads()
    try:
        serve(eager_checkpoint, tmp_path, {"torch_threads": 1})
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_every_upload_style(service):
    image = noise(120, 90)
    encoded = base64.b64encode(image).decode()
    uploads = [
        multipart(image, "data", LOW),  # curl -F data=@x.jpg
        multipart(image, "file", LOW),  # curl -F file=@x.jpg
        raw(image, "image/jpeg", LOW),  # curl --data-binary @x.jpg -H "Content-Type: image/jpeg"
        raw(image, "application/octet-stream", LOW),  # curl -T x.jpg
        json_upload({"data": encoded}, LOW),  # JSON base64
    ]
    replies = ask(service, uploads)
    assert [r.status for r in replies] == [200] * 5
    for reply in replies:
        assert reply.content_type == "application/json"
        assert set(reply.body) == {"tags", "detections", "width", "height"}
        assert (reply.body["width"], reply.body["height"]) == (120, 90)
        assert reply.body["detections"]
        assert boxes_inside(reply.body["detections"], 120, 90)
        assert reply.body["tags"] == list(dict.fromkeys(d["label"] for d in reply.body["detections"]))
    # One image, one model: every style gets the same answer.
    assert all(r.body == replies[0].body for r in replies)


def test_response_formats_and_threshold_overrides(service):
    image = noise(100, 100)
    encoded = base64.b64encode(image).decode()
    replies = ask(service, [
        multipart(image),  # the configured defaults: dict, threshold 0.5
        multipart(image, threshold="0"),
        multipart(image, format="list", threshold="0"),
        json_upload({"data": encoded, "format": "list", "threshold": 0}),
        raw(image, headers={"x-tag-format": "LIST", "X-SCORE-THRESHOLD": "0"}),
    ])
    assert [r.status for r in replies] == [200] * 5
    assert replies[0].body == {"tags": [], "detections": [], "width": 100, "height": 100}
    every = replies[1].body["detections"]
    tags = replies[2].body
    assert isinstance(tags, list) and tags == replies[1].body["tags"] and set(tags) <= set(CLASS_NAMES)
    assert replies[3].body == tags and replies[4].body == tags

    scores = sorted(d["score"] for d in every)
    middle = (scores[0] + scores[-1]) / 2
    assert scores[0] < middle < scores[-1]
    replies = ask(service, [
        multipart(image, threshold=str(middle)),
        json_upload({"data": encoded, "threshold": middle}),
        raw(image, headers={"X-Score-Threshold": str(middle)}),
    ])
    for reply in replies:
        some = reply.body["detections"]
        assert 0 < len(some) < len(every) and all(d["score"] >= round(middle, 4) for d in some)
        assert some == every[: len(some)]


def test_max_detections_from_the_config(eager_checkpoint, tmp_path):
    capped = serve(eager_checkpoint, tmp_path, {"max_detections": 7})
    (reply,) = ask(capped, [raw(noise(90, 90), headers=LOW)])
    assert len(reply.body["detections"]) == 7


def test_a_row_without_an_image_explains_the_upload_styles(service):
    # curl --data-binary without a Content-Type: TorchServe parses the body as a form, the row is empty.
    (reply,) = ask(service, [Upload([])])
    assert reply.status == 400 and reply.body["error"] == "no_image"
    for style in ("-F data=@photo.jpg", "-T photo.jpg", "Content-Type: image/jpeg", "base64"):
        assert style in reply.body["message"]
    # The reason phrase is the message cut to one short line.
    assert reply.phrase.startswith("the request holds no image") and len(reply.phrase) <= 200


def test_each_error_status_in_one_batch(service):
    good = noise(64, 48)
    uploads = [
        raw(good),
        raw(b"", "application/octet-stream"),
        raw(b"this is not an image at all", "application/octet-stream"),
        raw(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n", "application/pdf"),
        raw(encode(Image.new("RGB", (1200, 1000)), "PNG")),  # 1.2 million pixels, over max_pixels
        raw(good, headers={"X-Score-Threshold": "high"}),
        multipart(good, format="xml"),
        Upload([("body", "application/json", b'{"data": ')]),
        json_upload({"data": "%%% not base64 %%%"}),
        json_upload(["a", "list"]),
        Upload([("a", "image/jpeg", good), ("b", "image/jpeg", good)]),
        raw(encode(Image.new("RGB", (30, 20), "blue"), "PNG"), "image/png"),
    ]
    replies = ask(service, uploads)
    assert [(r.status, r.body.get("error") if isinstance(r.body, dict) else None) for r in replies] == [
        (200, None), (400, "empty"), (400, "not_an_image"), (415, "unsupported_format"),
        (413, "too_many_pixels"), (422, "bad_parameter"), (422, "bad_parameter"), (400, "bad_json"),
        (400, "bad_base64"), (400, "bad_json"), (400, "too_many_images"), (200, None),
    ]
    for reply in replies:
        assert reply.content_type == "application/json"
        if reply.status != 200:
            assert set(reply.body) == {"error", "message"} and reply.phrase == reply.body["message"]
    assert (replies[0].body["width"], replies[0].body["height"]) == (64, 48)
    assert (replies[-1].body["width"], replies[-1].body["height"]) == (30, 20)
    assert "1,200,000" in replies[4].body["message"] and "1,000,000" in replies[4].body["message"]
    assert "PDF" in replies[3].body["message"]


def test_error_body():
    refusal = Refusal.of(RequestError(422, "bad_parameter", "format must be ..."))
    assert (refusal.status, refusal.body()) == (422, {"error": "bad_parameter", "message": "format must be ..."})
    with pytest.raises(EmptyImageError) as caught:
        decode_image(b"")
    assert Refusal.of(caught.value) == Refusal(400, "empty", "the image is empty (0 bytes)")


def test_an_image_the_model_fails_on_is_answered_500_alone(service):
    tagger = service._entry_point.__self__.tagger
    run_model = tagger.run_model  # PyTorch's model or ONNX Runtime's, as the worker chose

    def fail_on_77_wide(images):
        if any(image.shape[-1] == 77 for image in images):
            raise RuntimeError("no kernel for this image\nsecond line of the trace")
        return run_model(images)

    tagger.run_model = fail_on_77_wide
    try:
        replies = ask(service, [raw(noise(64, 48)), raw(noise(77, 40)), raw(noise(64, 48))])
    finally:
        tagger.run_model = run_model
    assert [r.status for r in replies] == [200, 500, 200]
    assert replies[1].body == {"error": "inference_failed",
                               "message": "the model failed on this image (RuntimeError: no kernel for this image)"}
    assert replies[0].body == replies[2].body and replies[0].body["width"] == 64


def test_files_people_have_are_answered_by_what_they_are(service):
    """A malformed EXIF block is tagged unrotated; HEIF and AVIF image sequences are 415; a cut header is the
    decoder's own 400."""
    photo = Image.effect_noise((60, 40), 60).convert("RGB")
    replies = ask(service, [
        raw(malformed_exif_png(photo), "image/png"),
        raw(ftyp(b"msf1", b"msf1", b"hevc"), "image/heic"),
        raw(ftyp(b"avis", b"avif", b"avis", b"msf1"), "image/avif"),
        raw(b"\x00\x00\x01\x00\x01", "image/x-icon"),
        raw(b"P6 4 4\n", "image/x-portable-pixmap"),
    ])
    assert [(r.status, r.body.get("error")) for r in replies] == [
        (200, None), (415, "unsupported_format"), (415, "unsupported_format"), (400, "not_an_image"),
        (400, "not_an_image")]
    assert (replies[0].body["width"], replies[0].body["height"]) == (60, 40)
    assert replies[3].body["message"] == "the ICO image header is truncated or corrupt"


def test_a_batch_of_different_sizes(service):
    sizes = [(64, 48), (300, 120), (90, 250), (4000, 1), (1, 1500)]
    replies = ask(service, [raw(noise(w, h), headers=LOW) for w, h in sizes])
    assert [r.status for r in replies] == [200] * len(sizes)
    for reply, (width, height) in zip(replies, sizes):
        assert (reply.body["width"], reply.body["height"]) == (width, height)
        assert boxes_inside(reply.body["detections"], width, height)
    assert max(d["box"][2] for d in replies[1].body["detections"]) > 90  # in its own frame, not a shared one
    assert replies[4].body["detections"], "the 1x1500 image keeps the boxes that overlap it"


def test_exif_orientation_gives_the_rotated_frame(service):
    """An image stored sideways with EXIF orientation 6 is answered exactly as the upright image."""
    upright = Image.effect_noise((200, 80), 60).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer rotates the stored pixels 90 degrees clockwise: back to `upright`
    sideways = encode(upright.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif)
    stored = Image.open(io.BytesIO(sideways))
    assert stored.size == (80, 200) and stored.getexif()[0x0112] == 6
    rotated, straight = ask(service, [multipart(sideways, headers=LOW),
                                      multipart(encode(upright, "PNG"), headers=LOW)])
    assert rotated.status == straight.status == 200
    assert (rotated.body["width"], rotated.body["height"]) == (200, 80)
    assert rotated.body["detections"] and rotated.body == straight.body


def test_metrics_per_batch(service, caplog):
    caplog.set_level(logging.INFO, logger="ts.metrics.caching_metric")
    replies = ask(service, [raw(noise(50, 40), headers=LOW), raw(b""), multipart(noise(60, 60), format="list")])
    metrics = {}
    for record in caplog.records:
        if record.getMessage().startswith("[METRICS]Tagger"):
            name, value = record.getMessage()[len("[METRICS]"):].split("|")[0].split(":")
            metrics[name] = float(value)
    assert set(metrics) == {"TaggerPreprocessTime.Milliseconds", "TaggerInferenceTime.Milliseconds",
                            "TaggerPostprocessTime.Milliseconds", "TaggerImages.Count", "TaggerDetections.Count"}
    assert metrics["TaggerImages.Count"] == 2
    assert metrics["TaggerDetections.Count"] == len(replies[0].body["detections"]) > 0
    assert metrics["TaggerInferenceTime.Milliseconds"] > 0


def test_a_bad_handler_config_stops_the_load(eager_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="score_treshold"):
        serve(eager_checkpoint, tmp_path, {"score_treshold": 0.3})


def test_the_archive_loads_with_torchserve_outside_the_repository(eager_checkpoint, tmp_path):
    """The .mar holds handler/ as a folder next to the entry file; TorchServe imports the entry file by its
    module name with the model folder on the path, and its ``handler.…`` imports resolve there."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"handler": {"score_threshold": 0.0}}))
    archive = build_archive(eager_checkpoint, output=tmp_path / "tagger.mar",
                            model_config_file=tmp_path / "config.yaml")
    model_dir = tmp_path / "tagger"
    with zipfile.ZipFile(archive) as unpacked:  # TorchServe unpacks a .mar like this into its model folder
        unpacked.extractall(model_dir)
    assert (model_dir / "tagger_handler.py").is_file() and (model_dir / "handler" / "tagging.py").is_file()
    script = (
        "import json, sys, handler\n"
        "from ts.context import RequestProcessor\n"
        "from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl\n"
        "from ts.model_loader import TsModelLoader\n"
        "service = TsModelLoader().load('tagger', sys.argv[1], 'tagger_handler.py', None, 1,\n"
        "                               metrics_cache=MetricsCacheYamlImpl(sys.argv[2]))\n"
        "service.context.request_processor = [RequestProcessor({})]\n"
        "answer = service._entry_point([{'body': bytearray(open(sys.argv[3], 'rb').read())}], service.context)\n"
        "print(json.dumps({'package': handler.__file__, 'answer': answer}))\n"
    )
    image = tmp_path / "image.jpg"
    image.write_bytes(noise(70, 50))
    result = subprocess.run([sys.executable, "-c", script, model_dir, METRICS_CONFIG, image], cwd=model_dir,
                            env={**os.environ, "PYTHONPATH": str(model_dir)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(output["package"]).parent == model_dir / "handler"
    (answer,) = output["answer"]
    assert (answer["width"], answer["height"]) == (70, 50) and answer["detections"]


# --- a trained model --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_service(trained_checkpoint, tmp_path_factory) -> Service:
    return serve(trained_checkpoint, tmp_path_factory.mktemp("trained"))



def test_trained_model_answers_a_batch_with_the_right_tags(trained_service):
    scenes = [render_image(random.Random(3000 + n), width=w, height=h)
              for n, (w, h) in enumerate([(320, 320), (400, 260), (260, 420), (320, 320)])]
    uploads = [multipart(encode(image)) for image, _ in scenes]
    uploads.insert(2, raw(b"garbage", "application/octet-stream"))
    uploads.append(multipart(encode(scenes[0][0]), format="list"))
    replies = ask(trained_service, uploads)
    assert [r.status for r in replies] == [200, 200, 400, 200, 200, 200]
    answers = [r.body for r in replies if r.status == 200]
    right = total = wrong = 0
    for (image, objects), answer in zip(scenes, answers):
        assert (answer["width"], answer["height"]) == image.size
        truth = {CLASS_NAMES[label] for label, _ in objects}
        right, total = right + len(truth & set(answer["tags"])), total + len(truth)
        wrong += len(set(answer["tags"]) - truth)
    assert right / total >= 0.8 and wrong <= 0.2 * total, (right, total, wrong)
    assert answers[-1] == answers[0]["tags"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the lent GPU machine runs it")
@pytest.mark.parametrize("handler_config", [{}, {"half_precision": True, "channels_last": True}],
                         ids=["float32", "float16-channels_last"])
def test_a_gpu_worker_answers_a_mixed_batch_like_a_cpu_worker(trained_checkpoint, trained_service, handler_config,
                                                              tmp_path):
    """One batch of scenes of different sizes (one model call on a GPU), a large photo and a broken upload: the
    GPU worker gives every row the CPU worker's status, and the same detections by gpu_check's rules: boxes
    within 2 px (1% of a large photo's side), scores within 0.03."""
    gpu_service = serve(trained_checkpoint, tmp_path, handler_config, gpu=0)
    assert gpu_service._entry_point.__self__.device == torch.device("cuda", 0)
    sizes = [(320, 320), (640, 480), (480, 640), (800, 600), (2000, 1500), (400, 260)]
    uploads = [raw(encode(render_image(random.Random(4000 + n), width=w, height=h)[0], quality=90))
               for n, (w, h) in enumerate(sizes)]
    uploads.insert(3, raw(b"garbage", "application/octet-stream"))
    expected, found = ask(trained_service, uploads), ask(gpu_service, uploads)
    assert [r.status for r in found] == [r.status for r in expected] == [200, 200, 200, 400, 200, 200, 200]
    for cpu, gpu in zip(expected, found):
        if cpu.status != 200:
            assert gpu.body == cpu.body
            continue
        assert (gpu.body["width"], gpu.body["height"]) == (cpu.body["width"], cpu.body["height"])
        assert cpu.body["detections"]
        # gpu_check's pairing: detections near the threshold may fall on either side of it on other hardware.
        agreement = compare("gpu", [detections_of(cpu)], [detections_of(gpu)],
                            box_tolerance_px=max(BOX_TOLERANCE_PX, 0.01 * max(cpu.body["width"], cpu.body["height"])))
        assert agreement.agrees and agreement.matched, agreement.unmatched_detections


def detections_of(reply: Reply) -> list[Detection]:
    return [Detection(label=d["label"], score=d["score"], box=tuple(d["box"])) for d in reply.body["detections"]]


def hostile_uploads(image: bytes) -> dict[str, tuple[Upload, int, str]]:
    """Each hostile kind of request, with the status and error code it must get on its own."""
    encoded = base64.b64encode(image).decode()
    return {
        "deep JSON array": (Upload([("body", "application/json", b"[" * 200_000)]), 400, "bad_json"),
        "deep JSON with charset": (Upload([("body", "application/json; charset=utf-8", b"[" * 200_000)]),
                                   400, "bad_json"),
        "deep JSON object": (Upload([("body", "application/json", b'{"data":' * 50_000)]), 400, "bad_json"),
        "400-digit threshold": (Upload([("body", "application/json",
                                         f'{{"data": "{encoded}", "threshold": {"9" * 400}}}'.encode())]),
                                422, "bad_parameter"),
        "NaN threshold": (json_upload({"data": encoded, "threshold": float("nan")}), 422, "bad_parameter"),
        "Infinity threshold": (json_upload({"data": encoded, "threshold": float("inf")}), 422, "bad_parameter"),
        "list threshold": (json_upload({"data": encoded, "threshold": [0.5]}), 422, "bad_parameter"),
        "object threshold": (json_upload({"data": encoded, "threshold": {"a": 1}}), 422, "bad_parameter"),
        "explain header": (raw(image, headers={"explain": "True"}), 400, "predictions_only"),
        "describe header": (raw(image, headers={"describe": "True"}), 400, "predictions_only"),
    }


@pytest.mark.parametrize("kind", list(hostile_uploads(b"")))
def test_a_hostile_request_is_answered_alone(service, kind):
    """Each hostile kind, first in its batch (where BaseHandler reads the explain/describe headers), with
    three good neighbours: the batch succeeds, the neighbours are tagged, the hostile one gets its error."""
    image = noise(80, 60)
    upload, status, error = hostile_uploads(image)[kind]
    replies = ask(service, [upload, raw(image), multipart(image, note="holiday"), json_upload(
        {"data": base64.b64encode(image).decode(), "format": "list"})])
    assert [r.status for r in replies] == [status, 200, 200, 200]
    assert replies[0].body["error"] == error and replies[0].body["message"]
    assert replies[1].body["width"] == replies[2].body["width"] == 80 and isinstance(replies[3].body, list)


def test_a_batch_of_large_photos_is_answered_in_upload_pixels(service):
    large = encode(Image.effect_noise((1000, 750), 60).convert("RGB"), quality=90)  # under max_pixels (1 MP)
    replies = ask(service, [raw(large, headers=LOW), raw(noise(64, 48), headers=LOW)])
    assert [r.status for r in replies] == [200, 200]
    assert (replies[0].body["width"], replies[0].body["height"]) == (1000, 750)
    assert boxes_inside(replies[0].body["detections"], 1000, 750)
    assert max(d["box"][2] for d in replies[0].body["detections"]) > 480  # not the shrunk model input's pixels
