"""The training and evaluation CLIs: learning, checkpoints, resume, DDP on CPU, clear errors."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys

import shutil
from pathlib import Path

import pytest
import torch

from handler.checkpoint import load_checkpoint
from handler.detector import build_detector_from_config
from project import RACCOON
from tests.conftest import DEMO_TRAIN_ARGS, ROOT, TEST_EPOCHS, run_module
from training.checkpoints import checkpoint_name, save_checkpoint, save_serving_checkpoint
from training.events import CURVES_FILE, read_scalars
from training.presets import DEMO, model_config
from training.synthetic import CLASS_NAMES
from training.train import restore_training_state

# What the demo recipe must reach on held-out images (it measured 0.98 on 100 of them in 8.8 minutes).
LEARNED_MAP50 = 0.8
DEMO_LR = DEMO.training["lr"]


def test_training_writes_one_checkpoint_per_epoch_and_a_log(training_run):
    names = sorted(p.name for p in training_run.glob("Epoch.*.pth"))
    assert names == [f"Epoch.{n}.pth" for n in range(1, TEST_EPOCHS + 1)]
    log = [json.loads(line) for line in (training_run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, TEST_EPOCHS + 1))
    for record in log:
        assert {"loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "lr",
                "map50", "map"} <= set(record)
    # Learning from scratch in 36 steps: the RPN finds the objects (objectness loss falls ~9x in the
    # measured run) and the total loss falls; scoring them well takes the full recipe (model/demo.pth).
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]
    assert log[-1]["loss_objectness"] < 0.5 * log[0]["loss_objectness"]
    assert all(0.0 <= r["map50"] <= 1.0 for r in log)


def test_checkpoint_holds_everything_to_rebuild_and_resume(training_run):
    state = load_checkpoint(training_run / f"Epoch.{TEST_EPOCHS}.pth")
    assert state["epoch"] == TEST_EPOCHS
    assert state["class_names"] == CLASS_NAMES
    assert state["model_config"]["backbone"] == "demo" and state["model_config"]["num_classes"] == 23
    assert state["optimizer"]["param_groups"][0]["momentum"] == 0.9
    assert state["lr_scheduler"]["T_max"] == TEST_EPOCHS
    assert state["args"]["lr"] == DEMO_LR and state["args"]["batch_size"] == 8


def test_trained_demo_model_detects_held_out_images(trained_checkpoint, synthetic_data, tmp_path):
    """Learning, not just running: mAP@0.5 on generated test images the model never saw."""
    out = tmp_path / "metrics.json"
    result = run_module("training.evaluate", trained_checkpoint, synthetic_data, "--split", "test",
                        "--output", out, "--workers", "0")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(out.read_text())
    assert metrics["images"] == 40
    assert metrics["map50"] >= LEARNED_MAP50, metrics
    assert 0 < metrics["map"] < metrics["map50"]
    assert set(metrics["per_class"]) == set(CLASS_NAMES)
    assert "mAP@0.5" in result.stdout and "mAP@[.5:.95]" in result.stdout


def test_resume_continues_with_the_same_epoch_and_lr(training_run, synthetic_data, tmp_path):
    """Resuming from Epoch.2 gives an Epoch.3 whose schedule matches the uninterrupted run's."""
    result = run_module("training.train", "--data", synthetic_data, "--epochs", TEST_EPOCHS,
                        "--resume", training_run / "Epoch.2.pth", "--output-dir", tmp_path,
                        "--max-steps-per-epoch", 2, "--val-split", "", *DEMO_TRAIN_ARGS)
    assert result.returncode == 0, result.stderr
    assert f"epochs 3..{TEST_EPOCHS}" in result.stdout
    resumed = load_checkpoint(tmp_path / "Epoch.3.pth")
    original = load_checkpoint(training_run / "Epoch.3.pth")
    assert resumed["epoch"] == 3
    assert resumed["lr_scheduler"]["last_epoch"] == original["lr_scheduler"]["last_epoch"] == 3
    lr = resumed["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(original["optimizer"]["param_groups"][0]["lr"], rel=1e-9)
    expected = 1e-5 + (DEMO_LR - 1e-5) * (1 + math.cos(math.pi * 3 / TEST_EPOCHS)) / 2
    assert lr == pytest.approx(expected, rel=1e-6)


def run_two_processes(module: str, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 -m module args`` on the CPU (gloo); each line of stderr is tagged with
    its process (``[default0]:``, ``[default1]:``)."""
    with socket.socket() as probe:  # torchrun's rendezvous needs a real free port (0 hangs)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--tee", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", module, *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_two_process_ddp_on_cpu_writes_checkpoints_from_rank_0_only(trained_checkpoint, synthetic_data, tmp_path):
    """Both processes evaluate half of the validation images; rank 0's mAP is the saved model's mAP on all."""
    next_epoch = load_checkpoint(trained_checkpoint)["epoch"] + 1
    result = run_two_processes(
        "training.train", "--data", synthetic_data, "--resume", trained_checkpoint, "--epochs", next_epoch,
        "--max-steps-per-epoch", 3, "--output-dir", tmp_path, *DEMO_TRAIN_ARGS,
        "--batch-size", 1)  # one image per batch: no padding, so predictions do not depend on the batching
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "(2 processes, cpu)" in result.stdout
    last = checkpoint_name(next_epoch)
    assert [p.name for p in tmp_path.glob("Epoch.*.pth")] == [last]
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1 and (tmp_path / "curves.png").is_file()
    (record,) = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    state = load_checkpoint(tmp_path / last)
    assert not any(key.startswith("module.") for key in state["model"])  # saved without the DDP wrapper
    alone = run_module("training.evaluate", tmp_path / last, synthetic_data, "--split", "val", "--workers", 0,
                       "--batch-size", 1, "--output", tmp_path / "alone.json")
    assert alone.returncode == 0, alone.stderr[-3000:]
    single = json.loads((tmp_path / "alone.json").read_text())
    assert single["map50"] > 0
    assert (record["map50"], record["map"]) == pytest.approx((single["map50"], single["map"]), rel=1e-6)


@pytest.mark.parametrize("fault, message", [
    ("raise", "error: rank 1 of 2 failed at epoch 1 step 1: RuntimeError: injected fault on rank 1 at step 2"),
    ("nan", "error: loss became nan at epoch 1 step 1"),
])
def test_a_fault_on_one_ddp_process_stops_both_with_one_message(fault, message, synthetic_data, tmp_path):
    """tests/ddp_fault.py makes rank 1's second forward pass raise or return NaN losses. Rank 0 learns it in
    the same step (so it is rank 0 that reports it), both stop, and nothing waits for a collective timeout."""
    result = run_two_processes(
        "tests.ddp_fault", "--data", synthetic_data, "--epochs", 1, "--max-steps-per-epoch", 4,
        "--val-split", "", "--output-dir", tmp_path, *DEMO_TRAIN_ARGS, "--batch-size", 2,
        env={"DDP_FAULT": f"{fault}:1:2"})
    assert result.returncode == 1
    assert f"[default1]:injecting {fault}" in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and errors[0].startswith(f"[default0]:{message}"), result.stderr[-3000:]
    assert not list(tmp_path.glob("Epoch.*.pth"))


def small_voc_copy(source: Path, target: Path, splits: dict[str, list[str]], truncated: list[str]) -> Path:
    """A VOCdevkit folder with some images of ``source``; the ``truncated`` ones lose half their bytes
    (their headers still read, their pixels do not)."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (target / folder).mkdir(parents=True)
    for split, stems in splits.items():
        (target / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
        for stem in stems:
            shutil.copy(source / "Annotations" / f"{stem}.xml", target / "Annotations")
            data = (source / "JPEGImages" / f"{stem}.jpg").read_bytes()
            (target / "JPEGImages" / f"{stem}.jpg").write_bytes(data[:len(data) // 2] if stem in truncated else data)
    return target


def test_images_that_fail_to_decode_are_skipped_and_named_in_the_summary(synthetic_data, tmp_path):
    bad = ["train_00001", "train_00002", "val_00000"]
    data = small_voc_copy(synthetic_data, tmp_path / "data", truncated=bad, splits={
        "train": ["train_00000", "train_00001", "train_00002", "train_00003"], "val": ["val_00000", "val_00001"]})
    result = run_module("training.train", "--data", data, "--epochs", 1, "--output-dir", tmp_path / "out",
                        *DEMO_TRAIN_ARGS, "--batch-size", 2, "--workers", 2)  # decoded in loader processes
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped unreadable image" in result.stderr
    (record,) = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    named = {Path(line.split(" (")[0]).stem for line in record["unreadable_images"]}
    assert named == {"train_00001", "train_00002"}
    assert all("truncated" in line for line in record["unreadable_images"])
    assert [Path(line.split(" (")[0]).stem for line in record["val_unreadable_images"]] == ["val_00000"]
    assert "3 unreadable images skipped" in result.stdout
    assert all(f"{stem}.jpg" in result.stdout.split("unreadable images skipped")[1] for stem in bad)


def test_resume_with_more_epochs_continues_the_cosine_down_to_eta_min(training_run, synthetic_data, tmp_path):
    """Epoch.2 of a 3-epoch run, resumed with --epochs 5: from Epoch.2's LR down to eta_min at epoch 5."""
    epochs, eta_min = 5, 1e-5
    result = run_module("training.train", "--data", synthetic_data, "--epochs", epochs,
                        "--resume", training_run / "Epoch.2.pth", "--output-dir", tmp_path,
                        "--max-steps-per-epoch", 1, "--val-split", "", *DEMO_TRAIN_ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    start = load_checkpoint(training_run / "Epoch.2.pth")["optimizer"]["param_groups"][0]["lr"]
    rates = [load_checkpoint(tmp_path / checkpoint_name(n))["optimizer"]["param_groups"][0]["lr"]
             for n in range(3, epochs + 1)]
    expected = [eta_min + (start - eta_min) * (1 + math.cos(math.pi * n / epochs))
                / (1 + math.cos(math.pi * 2 / epochs)) for n in range(3, epochs + 1)]
    assert rates == pytest.approx(expected, rel=1e-9)
    assert start > rates[0] > rates[1] > rates[2] == pytest.approx(eta_min)


@pytest.mark.parametrize("copy", ["serving copy", "model archive"])
def test_resume_from_a_serving_copy_starts_a_fresh_optimizer_with_a_warning(copy, training_run, synthetic_data,
                                                                             tmp_path):
    if copy == "serving copy":
        serving = save_serving_checkpoint(training_run / "Epoch.2.pth", tmp_path / "serving.pth", float16=True)
    else:
        serving = tmp_path / "tagger.mar"
        packed = run_module("scripts.make_archive", "--checkpoint", training_run / "Epoch.2.pth", "--output", serving)
        assert packed.returncode == 0, packed.stderr
    common = ["--data", synthetic_data, "--resume", serving, "--output-dir", tmp_path / "out",
              "--max-steps-per-epoch", 1, "--val-split", "", *DEMO_TRAIN_ARGS]
    result = run_module("training.train", *common, "--epochs", 4)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "holds no optimizer state" in result.stderr and "fresh optimizer" in result.stderr
    assert "epochs 3..4" in result.stdout
    # Epoch 3 trained at the schedule's LR for epoch 2 of 4; after it, the LR is the schedule's for epoch 3.
    (record3, record4) = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert record3["lr"] == pytest.approx(1e-5 + (DEMO_LR - 1e-5) * (1 + math.cos(math.pi * 2 / 4)) / 2, rel=1e-9)
    assert record4["lr"] == pytest.approx(1e-5 + (DEMO_LR - 1e-5) * (1 + math.cos(math.pi * 3 / 4)) / 2, rel=1e-9)
    assert load_checkpoint(tmp_path / "out" / "Epoch.4.pth")["optimizer"]["state"]  # a real optimizer state now

    done = run_module("training.train", *common, "--epochs", 2)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {serving} has trained 2 epochs: give --epochs larger than 2 to go on")


def test_resume_restores_the_amp_grad_scaler_and_reads_checkpoints_without_one(tmp_path):
    config = model_config("demo", 3)
    model = build_detector_from_config(config)

    def fresh_state():
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4, eta_min=1e-5)

    optimizer, lr_scheduler = fresh_state()
    saved = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    path = save_checkpoint(tmp_path / "Epoch.1.pth", model=model, model_config=config, class_names=["a", "b"],
                           epoch=1, optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=saved)
    state = load_checkpoint(path)
    restored = torch.amp.GradScaler("cpu")
    optimizer, lr_scheduler = fresh_state()
    assert restore_training_state(state, optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=restored,
                                  source="Epoch.1.pth") == 2
    assert restored.state_dict() == saved.state_dict()

    del state["scaler"]  # a checkpoint written before the key existed
    older = torch.amp.GradScaler("cpu")
    optimizer, lr_scheduler = fresh_state()
    restore_training_state(state, optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=older, source="old")
    assert older.get_scale() == torch.amp.GradScaler("cpu").get_scale()


def test_training_and_evaluation_run_unchanged_on_the_raccoon_photos(tmp_path):
    result = run_module("training.train", "--data", RACCOON, "--epochs", 1, "--max-steps-per-epoch", 2,
                        "--output-dir", tmp_path, *DEMO_TRAIN_ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(tmp_path / "Epoch.1.pth")
    assert state["class_names"] == ["raccoon"] and state["model_config"]["num_classes"] == 2
    result = run_module("training.evaluate", tmp_path / "Epoch.1.pth", RACCOON, "--split", "val",
                        "--workers", "0", "--output", tmp_path / "m.json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "m.json").read_text())["per_class"].keys() == {"raccoon"}


@pytest.mark.parametrize("module, args, message", [
    ("training.train", ["--data", "/nonexistent/data"], "/nonexistent/data"),
    ("training.train", ["--data", "{data}", "--backbone", "vgg19"], "unknown backbone 'vgg19'"),
    ("training.train", ["--data", "{data}", "--resume", "{bad}"], "is not a PyTorch checkpoint"),
    ("training.train", ["--data", "{data}", "--backbone", "demo", "--backbone-weights", "/no/weights.pth"],
     "backbone weights not found"),
    ("training.train", ["--data", "{data}", "--model-override", "min_sise=3"], "unknown model setting"),
    ("training.evaluate", ["{bad}", "{data}"], "is not a PyTorch checkpoint"),
    ("training.evaluate", ["/no/Epoch.1.pth", "{data}"], "checkpoint not found"),
])
def test_bad_arguments_end_with_one_clear_line(module, args, message, synthetic_data, tmp_path):
    bad = tmp_path / "Epoch.1.pth"
    bad.write_text("not a checkpoint")
    args = [a.format(data=synthetic_data, bad=bad) for a in args]
    result = run_module(module, *args, "--output-dir" if module == "training.train" else "--split",
                        tmp_path if module == "training.train" else "test")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_backbone_weights_file_is_loaded_into_the_backbone(synthetic_data, tmp_path):
    from torchvision.models import vgg16

    weights = vgg16(weights=None).state_dict()
    torch.save(weights, tmp_path / "vgg16.pth")
    result = run_module("training.train", "--data", synthetic_data, "--backbone", "vgg16",
                        "--backbone-weights", tmp_path / "vgg16.pth", "--epochs", 1, "--max-steps-per-epoch", 1,
                        "--val-split", "", "--output-dir", tmp_path / "out", "--batch-size", "1",
                        "--model-override", "min_size=128", "--model-override", "max_size=128",
                        "--workers", "0", "--no-progress", "--lr", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(tmp_path / "out" / "Epoch.1.pth")
    assert state["model_config"]["min_size"] == 128
    # With lr 0 the training step changes nothing: the backbone holds exactly the file's weights.
    assert torch.equal(state["model"]["backbone.0.weight"], weights["features.0.weight"])
    assert torch.equal(state["model"]["backbone.28.bias"], weights["features.28.bias"])


# The smallest run the tests make: the demo backbone, two images a step, a few steps, no validation.
TINY_RUN_ARGS = ["--backbone", "demo", "--batch-size", "2", "--workers", "0", "--no-progress", "--val-split", ""]


def test_a_diverged_run_keeps_its_events_and_curves_up_to_the_failure(synthetic_data, tmp_path):
    """A learning rate far too high makes the loss NaN within a few steps of epoch 1: the steps before it are the
    ones a user needs, in the TensorBoard events and in curves.png, though no epoch ended."""
    result = run_module("training.train", "--data", synthetic_data, "--epochs", 2, "--max-steps-per-epoch", 8,
                        "--output-dir", tmp_path, *TINY_RUN_ARGS, "--lr", "1e4")
    assert result.returncode == 1
    (error,) = result.stderr.strip().splitlines()
    failed = re.match(r"error: loss became (nan|inf|-inf) at epoch 1 step (\d+) ", error)
    assert failed, result.stderr[-3000:]
    steps, losses = read_scalars(tmp_path)["train/loss"]
    assert steps == list(range(1, int(failed[2]) + 1)) and all(math.isfinite(loss) for loss in losses)
    assert (tmp_path / CURVES_FILE).stat().st_size > 0
    assert not list(tmp_path.glob("Epoch.*.pth"))


def test_keep_last_deletes_older_checkpoints_and_the_start_says_what_each_takes(synthetic_data, tmp_path):
    result = run_module("training.train", "--data", synthetic_data, "--epochs", 3, "--max-steps-per-epoch", 2,
                        "--output-dir", tmp_path, *TINY_RUN_ARGS, "--keep-last", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("Epoch.*.pth")) == ["Epoch.2.pth", "Epoch.3.pth"]
    lines = result.stdout.splitlines()
    assert [line.endswith("(deleted Epoch.1.pth)") for line in lines if line.startswith("epoch ")] == [
        False, False, True]
    (size_line,) = [line for line in lines if line.startswith("each checkpoint takes about ")]
    estimate = float(re.match(r"each checkpoint takes about ([\d.]+) MB \(estimated: weights", size_line)[1])
    assert estimate == pytest.approx((tmp_path / "Epoch.3.pth").stat().st_size / 1e6, rel=0.02)
    assert re.search(r"; --keep-last 2 keeps the newest 2: at most [\d.]+ MB$", size_line), size_line
