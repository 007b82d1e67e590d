"""TorchServe's gRPC API (README: "gRPC"), called as a user would: stubs generated at test time by grpcio-tools
from the protos inside the installed TorchServe's model-server.jar, against the real TorchServe of
tests/test_serving.py (one server for the module, on free loopback ports, token authorization on).

TorchServe 0.12 answers a refused request over gRPC with status OK and the handler's error JSON as the
prediction (GRPCJob.response drops the per-request status), so the README's rule tells a refusal from tags.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
import ts
from google.protobuf.empty_pb2 import Empty

from client.config import read_properties
from client.keys import KEY_FILE
from project import RACCOON, README
from tests.test_serving import (  # noqa: F401 (server: the module's TorchServe fixture)
    CALL_TIMEOUT_S, MODEL_CONFIG, Server, answers_to_queued, scene, server,
)

MODEL_SERVER_JAR = Path(ts.__file__).parent / "frontend" / "model-server.jar"
# inference.proto imports google/rpc/status.proto, which the jar carries too; google/protobuf/empty.proto
# comes with grpc_tools.
PROTO_FILES = ("inference.proto", "management.proto", "google/rpc/status.proto")
TOKEN_REFUSED = "Token Authorization failed"
# What the README's example names, and what the test runs it with instead.
EXAMPLE_KEY_FILE, EXAMPLE_TARGET, EXAMPLE_PHOTO = "/home/me/tagger/key_file.json", "127.0.0.1:7070", "photo.jpg"


@dataclass(frozen=True, kw_only=True)
class GrpcApi:
    """The modules grpc_tools.protoc generates from TorchServe's protos: messages (``*_pb2``) and stubs
    (``*_pb2_grpc``)."""

    inference: ModuleType
    inference_stubs: ModuleType
    management: ModuleType
    management_stubs: ModuleType


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """One answer of ``Predictions``: its gRPC status code and details and, when OK, the
    ``PredictionResponse`` itself."""

    code: grpc.StatusCode
    details: str | None
    response: Any = None

    @property
    def body(self) -> Any:
        """The prediction's JSON: tags, or a refusal (``refusal``)."""
        return json.loads(self.response.prediction)


def refusal(body: Any) -> dict[str, str] | None:
    """The README's rule: a refusal is a JSON object with an "error" key (the handler's ``Refusal.body()``);
    tags are an object with "tags" (format dict) or a list (format list)."""
    return body if isinstance(body, dict) and "error" in body else None


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> GrpcApi:
    """Stubs generated as the README says: the protos taken out of the installed model-server.jar, then
    ``python -m grpc_tools.protoc``; imported from their folder (sys.path only while importing)."""
    folder = tmp_path_factory.mktemp("grpc")
    protos, stubs = folder / "protos", folder / "stubs"
    with zipfile.ZipFile(MODEL_SERVER_JAR) as jar:
        jar.extractall(protos, PROTO_FILES)
    stubs.mkdir()
    generated = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(protos), f"--python_out={stubs}",
         f"--grpc_python_out={stubs}", *PROTO_FILES], capture_output=True, text=True)
    assert generated.returncode == 0, generated.stderr
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(stubs))
        return GrpcApi(inference=import_module("inference_pb2"), inference_stubs=import_module("inference_pb2_grpc"),
                       management=import_module("management_pb2"),
                       management_stubs=import_module("management_pb2_grpc"))


def readme_example() -> str:
    """The Python example of the README's "gRPC" section."""
    section = README.read_text().split("\n## gRPC\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def grpc_target(server: Server, kind: str) -> str:
    """``host:port`` of the server's gRPC ``kind`` API ("inference" or "management"), from its config."""
    properties = read_properties(server.config_file)
    return f"{properties[f'grpc_{kind}_address']}:{properties[f'grpc_{kind}_port']}"


def authorization(key: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``key`` (gRPC metadata names are lower case)."""
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture(scope="module")
def inference(server, api):
    with grpc.insecure_channel(grpc_target(server, "inference")) as channel:
        yield api.inference_stubs.InferenceAPIsServiceStub(channel)


@pytest.fixture(scope="module")
def management(server, api):
    with grpc.insecure_channel(grpc_target(server, "management")) as channel:
        yield api.management_stubs.ManagementAPIsServiceStub(channel)


@pytest.fixture
def predict(server, api, inference):
    """``predict(inputs, metadata=...)``: one Predictions call for the model, with the inference key unless
    ``metadata`` is given."""

    def call(inputs: dict[str, bytes], metadata: tuple[tuple[str, str], ...] | None = None) -> Prediction:
        request = api.inference.PredictionsRequest(model_name=server.config.model_name, input=inputs)
        try:
            response, done = inference.Predictions.with_call(
                request, metadata=authorization(server.keys().inference) if metadata is None else metadata,
                timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            return Prediction(code=exc.code(), details=exc.details())
        return Prediction(code=done.code(), details=done.details(), response=response)

    return call


def rest_answer(server: Server, image: bytes, **fields: str) -> Any:
    """The REST answer to ``image`` sent as a multipart file with the option ``fields``."""
    answer = server.post(files={"data": ("photo.jpg", image, "image/jpeg")}, data=fields)
    assert answer.status_code == 200, answer.text
    return answer.json()


def tags_of(prediction: Prediction) -> Any:
    """The answer of a call that must have been tagged."""
    assert prediction.code == grpc.StatusCode.OK, prediction.details
    assert refusal(prediction.body) is None, prediction.body
    return prediction.body


def test_a_photo_gets_the_same_answer_as_over_rest(server, predict):
    generated = scene(5600)[0]
    photo = sorted((RACCOON / "images").glob("*.jpg"))[0].read_bytes()  # a camera JPEG (the model finds none)
    for image in (generated, photo):
        assert tags_of(predict({"data": image})) == rest_answer(server, image)
    assert tags_of(predict({"data": generated}))["tags"]  # the model finds the generated shapes


def test_format_and_threshold_travel_as_input_keys(server, predict):
    image = scene(5601)[0]
    default = tags_of(predict({"data": image}))
    assert tags_of(predict({"data": image, "format": b"list"})) == default["tags"]
    everything = tags_of(predict({"data": image, "threshold": b"0"}))
    assert everything == rest_answer(server, image, threshold="0")
    assert len(everything["detections"]) > len(default["detections"])
    # Metadata is not a header: TorchServe passes only the input map to the handler.
    with_metadata = predict({"data": image}, metadata=(*authorization(server.keys().inference),
                                                       ("x-tag-format", "list")))
    assert tags_of(with_metadata) == default
    assert refusal(predict({"data": image, "format": b"xml"}).body)["error"] == "bad_parameter"


def test_calls_without_the_inference_key_are_refused(server, predict, inference):
    image = scene(5602)[0]
    keys = server.keys()
    tried = [(), authorization("wrongkey"), (("authorization", f"bearer {keys.inference}"),),
             authorization(keys.management)]
    for metadata in tried:
        refused = predict({"data": image}, metadata=metadata)
        assert refused.code == grpc.StatusCode.PERMISSION_DENIED and TOKEN_REFUSED in refused.details, metadata
    with pytest.raises(grpc.RpcError) as ping_refused:
        inference.Ping(Empty(), timeout=CALL_TIMEOUT_S)
    assert ping_refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    health = inference.Ping(Empty(), metadata=authorization(keys.inference), timeout=CALL_TIMEOUT_S).health
    assert json.loads(health) == {"status": "Healthy"}


def test_a_refused_upload_arrives_with_status_ok_and_its_error_as_the_prediction(predict):
    image = scene(5603)[0]
    uploads = {
        "not_an_image": {"data": b"\xff\xd8 not really a jpeg"},
        "no_image": {"data": b"holiday photo"},  # short text: a form field, as in a multipart body
        "too_many_images": {"data": image, "file": image},
    }
    for error, inputs in uploads.items():
        refused = predict(inputs)
        assert refused.code == grpc.StatusCode.OK
        assert not refused.response.HasField("status")  # only StreamPredictions2 fills it
        assert refusal(refused.body)["error"] == error and refused.body["message"], refused.body
    assert refusal(tags_of(predict({"data": image}))) is None


def test_a_broken_upload_in_a_burst_gets_its_refusal_and_the_others_their_tags(server, predict):
    good = scene(5604, width=300, height=200)[0]

    def tag_good() -> Prediction:
        return predict({"data": good})

    def tag_broken() -> Prediction:
        return predict({"data": b"\x89PNG\r\n\x1a\n broken"})

    workers = server.workers()
    # As test_serving's bad-upload test: behind more calls than the stopped workers' threads can hold, the
    # calls leave TorchServe's queue in turn, in batches of two or more, so the broken one shares a batch.
    queue_fill = [tag_good] * (len(workers) * MODEL_CONFIG["batchSize"] + 1)
    answers = answers_to_queued(workers, server.metrics_url, queue_fill, [tag_good], [tag_broken], [tag_good])
    assert [a.code for a in answers] == [grpc.StatusCode.OK] * len(answers), [a.details for a in answers]
    broken = answers.pop(len(queue_fill) + 1)
    assert refusal(broken.body)["error"] == "not_an_image"
    assert {(body["width"], body["height"]) for body in map(tags_of, answers)} == {(300, 200)}


def test_management_describes_the_model_and_refuses_registration(server, api, management):
    keys = server.keys()
    described = management.DescribeModel(api.management.DescribeModelRequest(model_name=server.config.model_name),
                                         metadata=authorization(keys.management), timeout=CALL_TIMEOUT_S)
    assert json.loads(described.msg)[0]["batchSize"] == MODEL_CONFIG["batchSize"]
    register = api.management.RegisterModelRequest(url="https://example.com/evil.mar", model_name="evil")
    unregister = api.management.UnregisterModelRequest(model_name=server.config.model_name)
    calls = [(management.RegisterModel, register, keys.management, "Model API disabled"),  # enable_model_api=false
             (management.UnregisterModel, unregister, keys.management, "Model API disabled"),
             (management.RegisterModel, register, keys.inference, TOKEN_REFUSED)]
    for method, request, key, reason in calls:
        with pytest.raises(grpc.RpcError) as refused:
            method(request, metadata=authorization(key), timeout=CALL_TIMEOUT_S)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED and reason in refused.value.details()


def test_the_readme_example_prints_tags_or_the_refusal(server, api, tmp_path):
    example = readme_example()
    for named in (EXAMPLE_KEY_FILE, EXAMPLE_TARGET, f'"{EXAMPLE_PHOTO}"'):
        assert example.count(named) == 1, f"the README's example no longer names {named}"
    photo = tmp_path / "photo.jpg"
    example = (example.replace(EXAMPLE_KEY_FILE, str(server.start_dir / KEY_FILE))
               .replace(EXAMPLE_TARGET, grpc_target(server, "inference")).replace(f'"{EXAMPLE_PHOTO}"', json.dumps(str(photo))))
    stubs = Path(api.inference.__file__).parent

    def run_example(image: bytes) -> str:
        photo.write_bytes(image)
        done = subprocess.run([sys.executable, "-c", example], cwd=stubs, capture_output=True, text=True,
                              timeout=CALL_TIMEOUT_S)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    image = scene(5605)[0]
    assert run_example(image) == str(rest_answer(server, image, threshold="0.3")["tags"])
    assert run_example(b"not a photo at all \x00").startswith("refused: not_an_image: ")
