"""KServe: the bundle of `make kserve-bundle`, deploy/kserve/inferenceservice.yaml checked against it, and the
real TorchServe started from the bundle the way KServe's TorchServe runtime starts it.

No cluster is reachable here, so the runtime's side is written down below (KSERVE_*) and the pod is played on
loopback: the bundle goes to a temporary folder standing for /mnt/models, TorchServe starts with the runtime's
command (paths mapped to that folder), its config file exactly as bundled, and the runtime's environment
(TS_SERVICE_ENVELOPE empty: no serviceEnvelope label). Free ports replace the pod's fixed ones through TS_*
variables, which the bundle's enable_envvars_config=true lets override the file. Requests go where KServe's
model server sends them (``/predictions/<model>``, JSON with a charset) and to TorchServe's own v1/v2 URLs.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest
import requests
import yaml
from ts.model_server import load_properties
from ts.version import __version__ as TORCHSERVE_VERSION

from handler.kserve import KServeEnvelope, open_envelope
from scripts.kserve_bundle import get_args_parser, write_bundle
from scripts.serve import running_server, stop_server
from tests.test_serving import at_once, free_ports, scene

ROOT = Path(__file__).resolve().parents[1]
INFERENCE_SERVICES = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"

# KServe's TorchServe runtime (ClusterServingRuntime kserve-torchserve): it copies the storageUri to
# /mnt/models, starts TorchServe with this command and TS_SERVICE_ENVELOPE="{{.Labels.serviceEnvelope}}", and
# runs its own model server in the pod on 8080 (HTTP) and 8081 (gRPC), forwarding to TorchServe's inference
# address. Its image is pytorch/torchserve-kfs:<runtimeVersion>.
KSERVE_MOUNT = "/mnt/models"
KSERVE_COMMAND = [
    "torchserve", "--start", f"--model-store={KSERVE_MOUNT}/model-store",
    f"--ts-config={KSERVE_MOUNT}/config/config.properties",
]
KSERVE_MODEL_SERVER_PORTS = {8080, 8081}
# What KServe's model server sends TorchServe (it adds a charset, so TorchServe leaves the body as bytes).
FORWARDED_JSON = {"Content-Type": "application/json; charset=UTF-8"}


@dataclass
class Pod:
    """TorchServe started from the bundle like the runtime does, on free loopback ports."""

    bundle: Path
    inference_url: str
    metrics_url: str
    start_dir: Path
    tmp_dir: Path
    process: psutil.Process

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(f"{self.inference_url}{path}", **kwargs)


@pytest.fixture(scope="module")
def bundle(trained_checkpoint, tmp_path_factory) -> Path:
    """The bundle, written where the pod's /mnt/models would be."""
    return write_bundle(trained_checkpoint, output=tmp_path_factory.mktemp("mnt") / "models")


@pytest.fixture(scope="module")
def bundle_config(bundle) -> dict[str, str]:
    return load_properties(str(bundle / "config" / "config.properties"))


@pytest.fixture(scope="module")
def pod(bundle, tmp_path_factory) -> Pod:
    root = tmp_path_factory.mktemp("pod")
    start_dir, tmp_dir = root / "start", root / "tmp"
    for folder in (start_dir, tmp_dir):
        folder.mkdir()
    inference, metrics, grpc_inference, grpc_management = free_ports(4)
    inference_url, metrics_url = f"http://127.0.0.1:{inference}", f"http://127.0.0.1:{metrics}"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "TS_CONFIG_FILE")}
    env.update({
        "TMPDIR": str(tmp_dir), "TEMP": str(tmp_dir),
        "TS_SERVICE_ENVELOPE": "",  # what the runtime sets for an InferenceService without serviceEnvelope
        "TS_INFERENCE_ADDRESS": inference_url, "TS_MANAGEMENT_ADDRESS": inference_url,
        "TS_METRICS_ADDRESS": metrics_url,
        "TS_GRPC_INFERENCE_PORT": str(grpc_inference), "TS_GRPC_MANAGEMENT_PORT": str(grpc_management),
        # The one absolute path inside the config file that the command line cannot map.
        "TS_METRICS_CONFIG": str(bundle / "config" / "metrics.yaml"),
    })
    command = [str(Path(sys.executable).with_name(KSERVE_COMMAND[0]))]
    command += [arg.replace(KSERVE_MOUNT, str(bundle)) for arg in KSERVE_COMMAND[1:]]
    console = start_dir / "console.log"
    with console.open("ab") as out:  # the Java server inherits stdout: a pipe would never close
        done = subprocess.run(command, cwd=start_dir, env=env, stdout=out, stderr=out)
    process = running_server(tmp_dir)
    assert done.returncode == 0 and process is not None, console.read_text()
    try:
        wait_for_ready_worker(f"{inference_url}/models/tagger", process)
        yield Pod(bundle, inference_url, metrics_url, start_dir, tmp_dir, process)
    finally:
        stop_server(start_dir=start_dir, tmp_dir=tmp_dir)


def wait_for_ready_worker(model_url: str, process: psutil.Process) -> None:
    """Waits, as KServe's model server does, until the management API lists a READY worker (no key needed)."""
    while True:
        assert process.is_running() and process.status() != psutil.STATUS_ZOMBIE, "TorchServe exited"
        try:
            described = requests.get(model_url)
            if described.status_code == 200 and any(w["status"] == "READY" for w in described.json()[0]["workers"]):
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)


def v1_body(image: bytes, **options) -> dict:
    return {"instances": [{"data": base64.b64encode(image).decode("ascii"), **options}]}


def v2_body(image: bytes, *, request_id: str | None = None, **parameters) -> dict:
    tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(image).decode("ascii")]}
    body = {"inputs": [tensor], **({"parameters": parameters} if parameters else {})}
    return {**body, "id": request_id} if request_id else body


def v2_result(answer: requests.Response):
    (output,) = answer.json()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("result", "BYTES", [1])
    (text,) = output["data"]
    return json.loads(text)


def test_kserve_bodies_open_into_the_plain_json_request_and_other_rows_pass():
    plain_json, image = {"body": {"data": "QUJD"}}, {"body": bytearray(b"\xff\xd8\xff\xe0 a JPEG")}
    assert open_envelope(plain_json) == (plain_json, None) and open_envelope(image) == (image, None)
    # As KServe's model server forwards it: JSON with a charset, which TorchServe hands over as bytes.
    assert open_envelope({"body": bytearray(b'{"instances": ["QUJD"]}')}) == (
        {"body": {"data": "QUJD"}}, KServeEnvelope(protocol="v1"))
    # v2 options: the request's parameters, overridden by the input's own.
    tensor = {"name": "x", "shape": [1], "datatype": "BYTES", "data": ["QUJD"], "parameters": {"threshold": 0.2}}
    v2 = {"id": "7", "inputs": [tensor], "parameters": {"format": "list", "threshold": 0.9}}
    assert open_envelope({"body": v2}) == (
        {"body": {"data": "QUJD", "format": "list", "threshold": 0.2}}, KServeEnvelope(protocol="v2", request_id="7"))


def test_bundle_is_what_the_runtime_reads(bundle, bundle_config):
    store_arg, config_arg = KSERVE_COMMAND[2].split("=", 1)[1], KSERVE_COMMAND[3].split("=", 1)[1]
    assert (bundle / Path(config_arg).relative_to(KSERVE_MOUNT)).is_file()
    assert bundle_config["model_store"] == store_arg
    assert sorted(p.name for p in (bundle / Path(store_arg).relative_to(KSERVE_MOUNT)).iterdir()) == ["tagger.mar"]
    metrics_config = Path(bundle_config["metrics_config"])
    assert (bundle / metrics_config.relative_to(KSERVE_MOUNT)).read_text() == (ROOT / "metrics.yaml").read_text()

    # TorchServe's addresses stay inside the pod, off the ports of KServe's model server; metrics are scraped.
    inference, management = urlparse(bundle_config["inference_address"]), urlparse(bundle_config["management_address"])
    assert inference.hostname == management.hostname == "127.0.0.1" and inference.port == management.port
    assert inference.port not in KSERVE_MODEL_SERVER_PORTS
    assert urlparse(bundle_config["metrics_address"]).hostname == "0.0.0.0"
    assert bundle_config["metrics_mode"] == "prometheus"
    # The decisions the README explains: no keys (the ingress authenticates), no model API, no TS envelope.
    assert bundle_config["enable_envvars_config"] == "true"
    assert bundle_config["disable_token_authorization"] == "true"
    assert bundle_config["enable_model_api"] == "false"
    assert bundle_config["service_envelope"] == ""
    assert "load_models" not in bundle_config

    # The snapshot registers the archive's model with the settings of the model config packed in it, which
    # names the pod's worker counts (TorchServe needs them in a snapshot; the handler sizes its threads by them).
    snapshot = json.loads(bundle_config["model_snapshot"])
    (versions,) = snapshot["models"].values()
    (model,) = versions.values()
    assert list(snapshot["models"]) == ["tagger"] and model["marName"] == "tagger.mar"
    with zipfile.ZipFile(bundle / "model-store" / "tagger.mar") as mar:
        packed = yaml.safe_load(mar.read("model-config.yaml"))
        assert json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["modelVersion"] in versions
    shipped = yaml.safe_load((ROOT / "model" / "model-config.yaml").read_text())
    assert {k: v for k, v in packed.items() if k not in ("minWorkers", "maxWorkers")} == {
        k: v for k, v in shipped.items() if k not in ("minWorkers", "maxWorkers")}
    for key in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout"):
        assert model[key] == packed[key], key


def test_inference_services_fit_the_bundle(bundle_config):
    services = list(yaml.safe_load_all(INFERENCE_SERVICES.read_text()))
    assert [s["kind"] for s in services] == ["InferenceService"] * 2
    metrics_port = str(urlparse(bundle_config["metrics_address"]).port)
    bundle_folder = get_args_parser().get_default("output").name  # archive/kserve -> "kserve"
    gpus = []
    for service in services:
        metadata, predictor = service["metadata"], service["spec"]["predictor"]
        model = predictor["model"]
        assert "serviceEnvelope" not in metadata.get("labels", {}), metadata["name"]
        assert metadata["annotations"]["prometheus.kserve.io/port"] == metrics_port
        assert metadata["annotations"]["prometheus.kserve.io/path"] == "/metrics"
        assert model["modelFormat"]["name"] == "pytorch" and model["protocolVersion"] in ("v1", "v2")
        assert model["runtimeVersion"].split("-")[0] == TORCHSERVE_VERSION  # the image of the pinned TorchServe
        storage = urlparse(model["storageUri"])
        assert storage.scheme in ("pvc", "gs", "s3") and Path(storage.path).name == bundle_folder
        assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
        limits, requests_ = model["resources"]["limits"], model["resources"]["requests"]
        gpus.append(int(limits.get("nvidia.com/gpu", 0)))
        assert int(requests_.get("nvidia.com/gpu", 0)) == gpus[-1]
        assert model["runtimeVersion"].endswith("-gpu") == (gpus[-1] > 0)
    assert sorted(gpus) == [0, 1]  # a CPU and a GPU variant


def test_v1_v2_and_plain_requests_get_the_same_tags(pod):
    image, _ = scene(7000)
    plain = pod.post("/predictions/tagger", files={"data": ("scene.jpg", image, "image/jpeg")})
    assert plain.status_code == 200, plain.text
    v1 = [
        pod.post("/predictions/tagger", data=json.dumps(v1_body(image)), headers=FORWARDED_JSON),
        pod.post("/v1/models/tagger:predict", json=v1_body(image)),
    ]
    v2 = [
        pod.post("/predictions/tagger", data=json.dumps(v2_body(image, request_id="req-1")), headers=FORWARDED_JSON),
        pod.post("/v2/models/tagger/infer", json=v2_body(image, request_id="req-1")),
    ]
    assert [a.status_code for a in v1 + v2] == [200] * 4, [a.text for a in v1 + v2]
    assert plain.json()["tags"]
    assert all(a.json() == {"predictions": [plain.json()]} for a in v1)
    for answer in v2:
        assert {k: answer.json()[k] for k in ("id", "model_name", "model_version")} == {
            "id": "req-1", "model_name": "tagger", "model_version": "1.0"}
        assert v2_result(answer) == plain.json()
    # Without an id of its own, a v2 answer carries TorchServe's request id.
    anonymous = pod.post("/v2/models/tagger/infer", json=v2_body(image))
    assert anonymous.json()["id"] == anonymous.headers["x-request-id"]


def test_options_travel_in_the_envelopes(pod):
    image, _ = scene(7001)
    default = pod.post("/v1/models/tagger:predict", json=v1_body(image)).json()["predictions"][0]
    as_list = pod.post("/v1/models/tagger:predict", json=v1_body(image, format="list")).json()["predictions"][0]
    assert as_list == default["tags"]
    assert v2_result(pod.post("/v2/models/tagger/infer", json=v2_body(image, format="list"))) == default["tags"]
    everything = v2_result(pod.post("/v2/models/tagger/infer", json=v2_body(image, threshold=0)))
    assert len(everything["detections"]) > len(default["detections"])


def test_bad_kserve_requests_get_their_own_errors_in_a_batch(pod):
    image, _ = scene(7002)
    encoded = base64.b64encode(image).decode("ascii")
    two_instances = {"instances": [{"data": encoded}, {"data": encoded}]}
    numbers = {"inputs": [{"name": "image", "shape": [3], "datatype": "INT64", "data": [1, 2, 3]}]}
    calls = [
        lambda: pod.post("/v1/models/tagger:predict", json=v1_body(image)),
        lambda: pod.post("/v1/models/tagger:predict", json=two_instances),
        lambda: pod.post("/v2/models/tagger/infer", json=numbers),
        lambda: pod.post("/v1/models/tagger:predict", json={"instances": [{"data": "not base64!"}]}),
        lambda: pod.post("/v2/models/tagger/infer", json=v2_body(b"\xff\xd8 not really a jpeg")),
        lambda: pod.post("/v2/models/tagger/infer", json=v2_body(image)),
    ]
    answers = at_once(*calls)
    assert [a.status_code for a in answers] == [200, 400, 400, 400, 400, 200], [a.text for a in answers]
    errors = [a.json()["error"] for a in answers[1:5]]
    assert errors == ["too_many_images", "no_image", "bad_base64", "not_an_image"]
    assert all(a.json()["message"] for a in answers[1:5])
    assert answers[0].json()["predictions"][0] == v2_result(answers[5])


def test_no_key_is_needed_and_models_cannot_be_registered(pod):
    ping = requests.get(f"{pod.inference_url}/ping")
    assert ping.json() == {"status": "Healthy"}
    assert not (pod.start_dir / "key_file.json").exists()
    register = requests.post(f"{pod.inference_url}/models", params={"url": "https://example.com/evil.mar"})
    assert register.status_code == 405  # enable_model_api=false
