"""KServe's Python model server in front of the pod's TorchServe, as KServe's TorchServe runtime runs it.

The runtime's image starts TorchServe from the bundle, then KServe's model server (the ``kserve`` package,
``kserve.ModelServer``) on ports 8080 (HTTP) and 8081 (gRPC). For each model of the bundle's snapshot it
forwards ``POST /v1/models/<name>:predict`` (protocol v1) or ``POST /v2/models/<name>/infer`` (v2) to
TorchServe's inference address with ``Content-Type: application/json``, and reports the model ready once
TorchServe's management API lists a READY worker. This file is that model server for the image of
``deploy/kserve/Dockerfile``, and what ``tests/test_kserve.py`` puts in front of TorchServe.

``python deploy/kserve/model_server.py [--ts_config /mnt/models/config/config.properties] [kserve's flags]``

Like the runtime's own wrapper, it takes the predictor host and the model names from the bundle's
``config.properties`` and the protocol from ``PROTOCOL_VERSION`` (which KServe's controller sets from the
InferenceService's ``protocolVersion``); kserve's ``--predictor_host``, ``--predictor_protocol`` and
``--model_name`` override them. Protocol ``grpc-v2`` stops it at start with one line (``SERVED_PROTOCOLS``
says why). It runs in its own environment (``requirements-model-server.txt``): kserve 0.13 pins numpy < 2
and psutil < 6, which the serving stack does not share, and it needs neither torch nor TorchServe.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from kserve import Model, ModelServer, model_server
from kserve.model import PredictorConfig

logger = logging.getLogger("tagger.model_server")

BUNDLE_CONFIG = Path("/mnt/models/config/config.properties")
# How long the pod waits for TorchServe's workers (a seed model takes minutes on a few cores).
READY_TIMEOUT_S = 600
# The protocols forwarded to TorchServe's HTTP inference address. For grpc-v2, kserve's Model sends each call
# as KServe's ModelInfer over gRPC (inference.GRPCInferenceService) to that address, where TorchServe speaks
# HTTP/1.1 only, so every call would fail. TorchServe's own gRPC port (7070) serves other services (its
# Predictions API; open_inference_grpc.proto's org.pytorch.serve.grpc.openinference.GRPCInferenceService):
# forwarding there would need a translating bridge, for what protocol v2 (the Open Inference Protocol over
# REST) already serves.
SERVED_PROTOCOLS = ("v1", "v2")


def read_properties(path: Path) -> dict[str, str]:
    """``key=value`` lines of a Java properties file, as the runtime's wrapper reads them."""
    properties = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            properties[key.strip()] = value.strip()
    return properties


def wait_until_ready(management_url: str, model_name: str, *, timeout: float = READY_TIMEOUT_S) -> None:
    """Waits until TorchServe's management API lists a READY worker of the model."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{management_url}/models/{model_name}", timeout=5) as described:
                if any(worker["status"] == "READY" for worker in json.load(described)[0]["workers"]):
                    return
        except (OSError, ValueError, KeyError, IndexError):
            pass  # TorchServe is still starting (URLError and HTTPError are OSErrors)
        if time.monotonic() > deadline:
            raise TimeoutError(f"TorchServe at {management_url} has no READY worker of {model_name} after {timeout} s")
        time.sleep(0.5)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(parents=[model_server.parser], description=__doc__.splitlines()[0])
    # Not "--config": kserve parses sys.argv when imported, and would take it for its --configure_logging.
    parser.add_argument("--ts_config", type=Path, default=BUNDLE_CONFIG, help="the bundle's config.properties")
    # Unset unless given: the bundle and PROTOCOL_VERSION decide, as in the runtime's wrapper.
    parser.set_defaults(model_name=None, predictor_host=None, predictor_protocol=None)
    return parser


def main() -> None:
    args, _ = get_args_parser().parse_known_args()
    protocol = args.predictor_protocol or os.environ.get("PROTOCOL_VERSION", "v1")
    if protocol not in SERVED_PROTOCOLS:
        sys.exit(f"model_server: protocolVersion {protocol} is not served (TorchServe is reached over HTTP only): "
                 f"set protocolVersion to one of {', '.join(SERVED_PROTOCOLS)} in the InferenceService")
    logging.basicConfig(level=logging.INFO)
    properties = read_properties(args.ts_config)
    predictor_host = args.predictor_host or urlparse(properties["inference_address"]).netloc
    names = [args.model_name] if args.model_name else list(json.loads(properties["model_snapshot"])["models"])
    management_url = properties.get("management_address", f"http://{predictor_host}")
    models = []
    for name in names:
        wait_until_ready(management_url, name)
        model = Model(name, PredictorConfig(predictor_host, predictor_protocol=protocol))
        model.ready = True
        models.append(model)
    logger.info("forwarding %s (%s) to %s", names, protocol, predictor_host)
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port).start(models)


if __name__ == "__main__":
    main()
