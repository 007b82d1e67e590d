"""Writes the model storage that KServe's TorchServe runtime serves: config/ and model-store/ (``make kserve-bundle``).

``python -m scripts.kserve_bundle [--checkpoint Epoch.N.pth | --model-dir model] [--output archive/kserve]``
(the checkpoint is chosen as by ``make archive``: the named one, the newest ``Epoch.N.pth``, the demo model).

KServe makes the InferenceService's ``storageUri`` the pod's ``/mnt/models`` (a PVC's folder mounted read-only,
a bucket's files downloaded by its storage initializer) and its TorchServe runtime starts
``torchserve --start --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties``.
The bundle holds exactly that::

    config/config.properties   config.properties's settings, with the KServe ones below
    config/metrics.yaml        the metric declarations (metrics.yaml)
    model-store/tagger.mar     the archive of `make archive`, with the pod's worker count in its model config

Every setting that is the same on a laptop and in a cluster (size limits, model API, metrics mode) is taken
from ``config.properties``; the worker and batching settings come from ``model/model-config.yaml``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import yaml

from client.config import read_properties, read_server_config
from handler.sizing import configured_workers
from project import METRICS_CONFIG, MODEL_CONFIG, SERVER_CONFIG
from scripts.make_archive import (
    MODEL_VERSION, ArchiveError, add_checkpoint_arguments, build_archive, checkpoint_to_pack,
)

# Where KServe mounts the storageUri's files, and the runtime's paths below it.
MOUNT = "/mnt/models"
CONFIG_DIR = "config"
MODEL_STORE_DIR = "model-store"
METRICS_FILE = "metrics.yaml"
# Model settings that TorchServe's model_snapshot carries (it registers the model with them at start).
SNAPSHOT_KEYS = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout", "startupTimeout")
# KServe scales a model by pods (replicas). A snapshot must name its worker counts (TorchServe 0.12 stops at
# start without them), so where model-config.yaml leaves them to the machine, each pod runs one worker; it is
# also written into the packed model config, from which the handler gives that worker all of the pod's cores.
POD_WORKERS = 1

# The settings that differ in the cluster, each with why; None leaves the setting out.
KSERVE_SETTINGS: dict[str, tuple[str | None, str]] = {
    "inference_address": (
        "http://127.0.0.1:8085",
        "KServe's model server answers the v1/v2 URLs on 8080 and forwards them here, inside the pod.",
    ),
    "management_address": (
        "http://127.0.0.1:8085",
        "KServe's model server asks here whether the model is ready (its own gRPC port is 8081).",
    ),
    "metrics_address": (
        "http://0.0.0.0:8082",
        "TorchServe's and the handler's metrics, on the pod's address: Prometheus scrapes them here in the "
        "Serverless and the RawDeployment mode alike (the InferenceService's prometheus.io annotations). "
        "KServe's metric aggregation would need its qpext queue-proxy, which RawDeployment pods lack. The port "
        "has no key (TorchServe's Netty 4.1.53): deploy/kserve/metrics-networkpolicy.yaml admits it from the "
        "monitoring namespace only.",
    ),
    "model_store": (f"{MOUNT}/{MODEL_STORE_DIR}", "Where KServe puts the storageUri's model-store/."),
    "metrics_config": (f"{MOUNT}/{CONFIG_DIR}/{METRICS_FILE}", "The metric declarations of this bundle."),
    "load_models": (None, "model_snapshot (below) loads the model, with its worker and batching settings."),
    "token_expiration_min": (None, "there are no keys (disable_token_authorization)."),
    "disable_token_authorization": (
        "true",
        "KServe's model server calls TorchServe without a key, and TorchServe listens on the pod's loopback "
        "only: callers are authenticated by the cluster's ingress (e.g. Istio with an AuthorizationPolicy). "
        "The model API stays off (enable_model_api=false above): models come from storageUri only.",
    ),
    "enable_envvars_config": (
        "false",
        "No TS_* environment variable overrides this file. KServe's controller always labels a TorchServe "
        "InferenceService serviceEnvelope=kserve (protocol v1) or kservev2 (v2), and the runtime passes the "
        "label on as TS_SERVICE_ENVELOPE. TorchServe's own envelopes read only the first request of a batch "
        "and answer the whole batch once: every request of a batch of 4 failed (503 'number of batch response "
        "mismatched'). The handler reads the v1 and v2 bodies itself, request by request, so the file's "
        "settings win.",
    ),
    "service_envelope": ("", "None: the handler reads KServe v1 and v2 bodies itself (above)."),
}


def bundle_config(server_config: Path, model_settings: dict[str, Any], *, model_name: str) -> str:
    """The text of the bundle's ``config.properties``.

    Args:
        server_config: the repository's ``config.properties`` (every setting KServe does not change).
        model_settings: the packed model config (workers and batching for the model snapshot).
        model_name: the model's name, that of the archive ``server_config`` serves.
    """
    shared = {key: value for key, value in read_properties(server_config).items() if key not in KSERVE_SETTINGS}
    lines = [
        f"# TorchServe on KServe ({MOUNT}/{CONFIG_DIR}/config.properties), written by `make kserve-bundle`.",
        f"# The same as {server_config.name} (see the reasons there):",
        *(f"{key}={value}" for key, value in shared.items()),
        "",
        "# KServe:",
    ]
    for key, (value, why) in KSERVE_SETTINGS.items():
        lines.append(_comment(why if value is not None else f"No {key}: {why}"))
        if value is not None:
            lines.append(f"{key}={value}")
    lines.append(_comment(f"Registers {model_name} at start with the worker and batching settings of its model "
                          "config."))
    snapshot = model_snapshot(model_settings, model_name=model_name)
    lines.append(f"model_snapshot={json.dumps(snapshot, separators=(',', ':'))}")
    return "\n".join(lines) + "\n"


def _comment(text: str) -> str:
    return textwrap.fill(text, width=110, initial_indent="# ", subsequent_indent="# ")


def model_snapshot(model_settings: dict[str, Any], *, model_name: str) -> dict[str, Any]:
    """TorchServe's start-up snapshot: the one model, with the worker and batching settings given."""
    model = {"defaultVersion": True, "marName": f"{model_name}.mar"}
    model.update({key: model_settings[key] for key in SNAPSHOT_KEYS if key in model_settings})
    return {"name": "startup.cfg", "modelCount": 1, "models": {model_name: {MODEL_VERSION: model}}}


def pod_model_config(text: str) -> str:
    """``model-config.yaml``'s text with the worker counts of one pod added where it names none.

    A snapshot starts the counts it names as they are, without the check TorchServe applies to a packed
    model config (``maxWorkers >= minWorkers > 0``, else its default count), so a pair that fails the check
    is refused here: the handler sizes its threads by the packed config's rule.

    Raises:
        ValueError: the config names a worker pair TorchServe would not start from an archive.
    """
    settings = yaml.safe_load(text) or {}
    workers = settings.get("minWorkers", settings.get("maxWorkers", POD_WORKERS))
    added = {key: workers for key in ("minWorkers", "maxWorkers") if key not in settings}
    packed = {**settings, **added}
    if configured_workers(packed) != packed["minWorkers"]:
        raise ValueError(f"minWorkers {settings.get('minWorkers')!r} and maxWorkers {settings.get('maxWorkers')!r} of "
                         "the model config: a pod needs whole numbers with maxWorkers >= minWorkers > 0")
    if not added:
        return text
    lines = [f"{key}: {value}" for key, value in added.items()]
    return text + "\n# Added by `make kserve-bundle`: workers per pod (KServe adds pods to scale).\n" + "\n".join(lines) + "\n"


def write_bundle(
    checkpoint: Path,
    *,
    output: Path,
    server_config: Path = SERVER_CONFIG,
    model_config: Path = MODEL_CONFIG,
    metrics_config: Path = METRICS_CONFIG,
) -> Path:
    """Writes ``output/config/`` and ``output/model-store/<model>.mar``; returns ``output``.

    Raises:
        CheckpointError: the checkpoint cannot be read or does not fit its model config.
        ArchiveError: torch-model-archiver failed.
        ServerConfigError: ``server_config`` names no served archive.
    """
    model_name = read_server_config(server_config).model_name
    config_dir, store = output / CONFIG_DIR, output / MODEL_STORE_DIR
    config_dir.mkdir(parents=True, exist_ok=True)
    store.mkdir(parents=True, exist_ok=True)
    pod_config = pod_model_config(model_config.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        packed_config = Path(tmp) / model_config.name
        packed_config.write_text(pod_config)
        build_archive(checkpoint, output=store / f"{model_name}.mar", model_config_file=packed_config)
    shutil.copyfile(metrics_config, config_dir / METRICS_FILE)
    (config_dir / "config.properties").write_text(bundle_config(server_config, yaml.safe_load(pod_config),
                                                                 model_name=model_name))
    return output


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts.kserve_bundle", description=__doc__.splitlines()[0])
    add_checkpoint_arguments(parser)
    parser.add_argument("--output", type=Path, default=Path("archive/kserve"), help="the folder to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    checkpoint = checkpoint_to_pack(args)
    try:
        output = write_bundle(checkpoint, output=args.output)
    except (ValueError, ArchiveError) as exc:  # CheckpointError and ServerConfigError are ValueErrors
        print(f"kserve_bundle: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {output}/ from {checkpoint}: copy it to the InferenceService's storageUri "
          "(see README, Kubernetes / KServe)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
