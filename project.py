"""Where the project's files are: the one module that knows the repository's layout.

Every tool finds the project's own files (TorchServe's config, the model config, the shipped model) through
these paths, so none depends on the folder it runs in. Paths a user passes (``--data``, ``--output-dir``)
are theirs and stay relative to where they run the command.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent

SERVER_CONFIG = ROOT / "config.properties"  # TorchServe: addresses, model store, the served archive
# Where `make serve` starts TorchServe: config.properties' relative paths (model_store) are taken from here,
# and TorchServe writes key_file.json and logs/ here.
SERVE_DIR = ROOT
LOG_CONFIG = ROOT / "log4j2.xml"  # TorchServe's logging, one rolling file per log
METRICS_CONFIG = ROOT / "metrics.yaml"  # the metrics TorchServe and the handler publish
HANDLER_PACKAGE = ROOT / "handler"  # packed into the model archive
MODEL_DIR = ROOT / "model"
MODEL_CONFIG = MODEL_DIR / "model-config.yaml"  # TorchServe's per-model settings, packed into the archive
SHIPPED_CHECKPOINT = MODEL_DIR / "demo.pth"  # the demo model: served when no training run wrote Epoch.N.pth
README = ROOT / "README.md"
RACCOON = ROOT / "tests" / "data" / "raccoon"  # real photos with boxes (tests and the accuracy benchmark)
