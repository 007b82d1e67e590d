"""Session fixtures: a generated data set and real checkpoints written by the real training CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from handler.detector import build_detector_from_config
from project import ROOT, SHIPPED_CHECKPOINT
from training.checkpoints import checkpoint_name, save_checkpoint
from training.presets import DEMO, model_config
from training.synthetic import CLASS_NAMES, write_dataset


# The demo recipe of `make demo-model`, run for a few steps only: the suite's own training shows that the
# real CLI learns from scratch; the trained-model tests use the shipped checkpoint (model/demo.pth).
DEMO_TRAIN_ARGS = [*DEMO.recipe, "--workers", "0", "--no-progress"]
TEST_TRAIN_IMAGES = 96
TEST_EPOCHS = 3
TEST_STEPS_PER_EPOCH = 12


def run_module(module: str, *args: str, env: dict | None = None):
    """Runs ``python -m module args`` from the repository root, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session", autouse=True)
def private_temp_folder(tmp_path_factory):
    """The temp folder of this process and of the processes it starts, for the session (handlers loaded in the
    tests keep their busy record there), so that no test writes into the machine's /tmp; servers the tests
    start get a TMPDIR of their own."""
    before = tempfile.tempdir
    with pytest.MonkeyPatch.context() as patch:
        tempfile.tempdir = str(tmp_path_factory.mktemp("tmp"))
        patch.setenv("TMPDIR", tempfile.tempdir)
        yield
    tempfile.tempdir = before


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A generated data set like the demo's (varied sizes; its test split is the demo's first 40 test images)."""
    root = tmp_path_factory.mktemp("synthetic")
    return write_dataset(root, counts={"train": TEST_TRAIN_IMAGES, "val": 20, "test": 40}, seed=0)


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory) -> Path:
    """An Epoch.0.pth of a randomly initialised demo model with the 22 synthetic classes."""
    config = model_config("demo", len(CLASS_NAMES) + 1)
    path = tmp_path_factory.mktemp("untrained") / checkpoint_name(0)
    return save_checkpoint(path, model=build_detector_from_config(config), model_config=config,
                           class_names=CLASS_NAMES, epoch=0)


@pytest.fixture(scope="session")
def training_run(synthetic_data, tmp_path_factory) -> Path:
    """The output folder of the real training CLI: the demo recipe for a few steps (a minute or two)."""
    output = tmp_path_factory.mktemp("training_run")
    result = run_module("training.train", "--data", synthetic_data, "--epochs", TEST_EPOCHS,
                        "--max-steps-per-epoch", TEST_STEPS_PER_EPOCH, "--output-dir", output, *DEMO_TRAIN_ARGS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output


@pytest.fixture(scope="session")
def trained_checkpoint() -> Path:
    """The shipped demo model (``make demo-model`` writes it): it finds the generated shapes at any size."""
    path = SHIPPED_CHECKPOINT
    assert path.is_file(), f"{path} is missing: `make demo-model` writes it"
    return path
