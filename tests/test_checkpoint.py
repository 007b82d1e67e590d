"""The checkpoint format: Epoch.N.pth files written and read back, their errors, and resuming a schedule."""

from __future__ import annotations

import math
import pickle
import random
import re
import resource
import signal
import zipfile
from pathlib import Path

import pytest
import torch
from torchvision.transforms.functional import to_tensor

from handler.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from handler.detector import build_detector_from_config
from scripts import make_archive
from training import train
from training.checkpoints import checkpoint_name, newest_checkpoint, save_checkpoint, save_serving_checkpoint
from training.presets import model_config
from training.synthetic import CLASS_NAMES, render_image

CHECKPOINT_KEYS = {"model", "optimizer", "lr_scheduler", "scaler", "epoch", "model_config", "class_names", "args"}


def picture_and_target(seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A generated 320x320 picture of shapes and its boxes and labels (labels count from 1)."""
    image, objects = render_image(random.Random(seed))
    boxes = torch.tensor([box for _, box in objects], dtype=torch.float32)
    return to_tensor(image), {"boxes": boxes, "labels": torch.tensor([label + 1 for label, _ in objects])}


def seed_optimizer(model: torch.nn.Module, epochs: int):
    """The seed's optimizer and schedule, as training builds them."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=0.0005)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=0.00001)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    image, target = picture_and_target(seed)
    model.train()
    optimizer.zero_grad()
    sum(model([image], [target]).values()).backward()
    optimizer.step()


@pytest.fixture
def demo_checkpoint(tmp_path) -> tuple[Path, torch.nn.Module, dict]:
    """A demo model trained one step (weights and batch-norm statistics moved), saved as Epoch.3.pth."""
    torch.manual_seed(0)
    # Keep every detection: random weights score all classes about 1/23, under the default 0.05.
    config = model_config("demo", len(CLASS_NAMES) + 1, box_score_thresh=0.0)
    model = build_detector_from_config(config)
    optimizer, lr_scheduler = seed_optimizer(model, epochs=10)
    train_step(model, optimizer, seed=1)
    args = {"data": tmp_path / "data", "output_dir": tmp_path, "epochs": 10, "lr": 0.001,
            "model_override": ["min_size=320"], "backbone_weights": None, "extra_images": [tmp_path / "a.jpg"]}
    path = save_checkpoint(tmp_path / checkpoint_name(3), model=model, model_config=config,
                           class_names=CLASS_NAMES, epoch=3, optimizer=optimizer, lr_scheduler=lr_scheduler,
                           args=args)
    return path, model, config


def test_round_trip_keeps_everything_and_rebuilds_the_same_model(demo_checkpoint, tmp_path):
    path, model, config = demo_checkpoint
    assert path == tmp_path / "Epoch.3.pth"

    state = load_checkpoint(path)

    assert set(state) == CHECKPOINT_KEYS
    assert state["epoch"] == 3
    assert state["class_names"] == CLASS_NAMES
    assert state["model_config"] == config
    assert state["args"] == {"data": str(tmp_path / "data"), "output_dir": str(tmp_path), "epochs": 10,
                             "lr": 0.001, "model_override": ["min_size=320"], "backbone_weights": None,
                             "extra_images": [str(tmp_path / "a.jpg")]}
    rebuilt = model_from_checkpoint(state)
    saved = model.state_dict()
    assert rebuilt.state_dict().keys() == saved.keys()
    assert all(torch.equal(tensor, saved[name]) for name, tensor in rebuilt.state_dict().items())

    image, _ = picture_and_target(seed=2)
    with torch.no_grad():
        expected = model.eval()([image])[0]
        got = rebuilt.eval()([image])[0]
        torch.manual_seed(1)
        fresh = build_detector_from_config(config).eval()([image])[0]
    assert len(expected["boxes"]) > 0
    for key in ("boxes", "labels", "scores"):
        assert torch.equal(got[key], expected[key]), key
    assert not torch.equal(fresh["scores"], expected["scores"])  # the weights, not the config, decide


def test_written_file_is_a_weights_only_torch_file_and_no_temporary_is_left(demo_checkpoint, tmp_path):
    path, _, _ = demo_checkpoint
    state = torch.load(path, weights_only=True)
    assert set(state) == CHECKPOINT_KEYS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Epoch.3.pth"]


def test_a_save_that_fails_mid_write_keeps_the_old_checkpoint_and_leaves_no_temporary(tmp_path):
    """A full disk halfway through an Epoch.N.pth: the write fails for real (a file size limit makes the kernel
    refuse it, EFBIG, as ENOSPC would), the error reaches the caller, and nothing half-written stays behind."""
    config = model_config("demo", 3)
    model = build_detector_from_config(config)
    path = save_checkpoint(tmp_path / checkpoint_name(1), model=model, model_config=config,
                           class_names=["cat", "dog"], epoch=1)
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    on_limit = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 4, hard))
    try:
        with pytest.raises((OSError, RuntimeError)):
            save_checkpoint(path, model=model, model_config=config, class_names=["cat", "dog"], epoch=2)
        with pytest.raises((OSError, RuntimeError)):
            save_checkpoint(tmp_path / checkpoint_name(2), model=model, model_config=config,
                            class_names=["cat", "dog"], epoch=2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, on_limit)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Epoch.1.pth"]
    assert path.read_bytes() == before


def test_the_start_line_counts_the_new_checkpoint_written_before_the_oldest_is_deleted():
    """--keep-last N: Epoch.N+1 is complete before the oldest goes, so N+1 checkpoints are on disk at the peak."""
    model = build_detector_from_config(model_config("demo", 3))
    optimizer, _ = seed_optimizer(model, epochs=5)
    line = train.checkpoint_size_line(model, optimizer, epochs=5, keep_last=2)
    each = float(re.match(r"each checkpoint takes about ([\d.]+) MB", line)[1])
    peak = float(re.search(r"; --keep-last 2 keeps the newest 2: at most ([\d.]+) MB$", line)[1])
    assert "3 are on disk at the peak" in line, line
    assert peak == pytest.approx(3 * each, rel=0.02)


def test_a_checkpoint_without_optimizer_or_args_round_trips(tmp_path):
    config = model_config("demo", 3)
    path = save_checkpoint(tmp_path / "deep" / "folder" / checkpoint_name(0), model=build_detector_from_config(config),
                           model_config=config, class_names=["cat", "dog"], epoch=0)
    state = load_checkpoint(path)
    assert (state["optimizer"], state["lr_scheduler"], state["scaler"], state["args"]) == (None, None, None, {})
    assert state["class_names"] == ["cat", "dog"]
    assert model_from_checkpoint(state).roi_heads.box_predictor.cls_score.out_features == 3


# --- files that are not checkpoints ------------------------------------------------------------------------


def _write_text(path: Path) -> None:
    path.write_text("epoch 3: loss 0.25\n")


def _write_plain_pickle(path: Path) -> None:
    """A pickle, as the legacy torch format is, but without torch's magic number."""
    path.write_bytes(pickle.dumps({"model": {}, "epoch": 3}, protocol=2))


def _write_tensor(path: Path) -> None:
    torch.save(torch.zeros(3), path)


def _write_torchvision_references_checkpoint(path: Path) -> None:
    """What torchvision's reference training scripts write: no model_config, no class_names."""
    torch.save({"model": {}, "optimizer": {}, "lr_scheduler": {}, "epoch": 3, "args": {}}, path)


def _write_too_few_class_names(path: Path) -> None:
    config = model_config("demo")
    save_checkpoint(path, model=build_detector_from_config(config), model_config=config,
                    class_names=["cat", "dog", "bird"], epoch=1)


def _write_half_a_checkpoint(path: Path) -> None:
    config = model_config("demo", 3)
    save_checkpoint(path, model=build_detector_from_config(config), model_config=config,
                    class_names=["cat", "dog"], epoch=1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "write, message",
    [
        (None, r"checkpoint not found: .*Epoch\.7\.pth"),
        (_write_text, r"Epoch\.7\.pth is not a PyTorch checkpoint \(torch\.save writes a zip archive, or its legacy "
                      r"format; this is neither\)"),
        (_write_plain_pickle, r"Epoch\.7\.pth is not a PyTorch checkpoint"),
        (lambda path: path.write_bytes(b""), r"Epoch\.7\.pth is not a PyTorch checkpoint"),
        (_write_half_a_checkpoint, r"cannot read checkpoint .*Epoch\.7\.pth: the file is cut short or damaged"),
        (_write_tensor, r"Epoch\.7\.pth is not a tagger checkpoint \(needs the keys model, epoch, model_config, "
                        r"class_names\)"),
        (_write_torchvision_references_checkpoint, r"Epoch\.7\.pth is not a tagger checkpoint"),
        (_write_too_few_class_names, r"Epoch\.7\.pth: model has 23 classes but 3 class names \(\+1 background\)"),
    ],
    ids=["missing", "text", "plain-pickle", "empty", "truncated", "plain-tensor", "lacks-keys", "class-count-mismatch"],
)
def test_load_refuses_what_is_not_a_checkpoint_with_a_clear_message(write, message, tmp_path):
    path = tmp_path / "Epoch.7.pth"
    if write:
        write(path)
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)


def test_a_text_file_is_named_in_one_line_by_the_archive_and_training_clis(tmp_path, capsys):
    """`make archive CHECKPOINT=/etc/passwd`, `train --resume /etc/passwd`: what the file is not, no torch advice."""
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    said = (f"{passwd} is not a PyTorch checkpoint (torch.save writes a zip archive, or its legacy format; this is "
            "neither)")
    assert make_archive.main(["--checkpoint", str(passwd), "--output", str(tmp_path / "tagger.mar")]) == 1
    assert capsys.readouterr().err.splitlines() == [f"make_archive: {said}"]
    assert train.main(["--data", str(tmp_path), "--resume", str(passwd), "--output-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.splitlines() == [f"error: {said}"]


def test_a_legacy_format_checkpoint_is_loaded_and_packed(demo_checkpoint, tmp_path):
    """torch.save(..., _use_new_zipfile_serialization=False) writes no zip archive; torch.load reads it safely."""
    path, model, config = demo_checkpoint
    legacy = tmp_path / "legacy" / path.name
    legacy.parent.mkdir()
    torch.save(torch.load(path, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(legacy)

    state = load_checkpoint(legacy)
    assert state["epoch"] == 3 and state["model_config"] == config and state["class_names"] == CLASS_NAMES
    saved = model.state_dict()
    assert all(torch.equal(tensor, saved[name]) for name, tensor in model_from_checkpoint(state).state_dict().items())
    # The archive's serving copy is made from it too (that path maps zip files into memory).
    serving = load_checkpoint(save_serving_checkpoint(legacy, tmp_path / "serving.pth", float16=True))
    assert serving["epoch"] == 3
    assert torch.equal(serving["model"]["roi_heads.box_predictor.cls_score.weight"],
                       saved["roi_heads.box_predictor.cls_score.weight"].half())


def test_a_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path)


def test_a_pickled_whole_model_is_refused_in_one_line(tmp_path):
    path = tmp_path / "Epoch.7.pth"
    torch.save(build_detector_from_config(model_config("demo")), path)
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*Epoch\.7\.pth") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "wrong", [{"model_config": ["demo"]}, {"class_names": 22}], ids=["config-is-a-list", "class-names-is-a-number"]
)
def test_wrong_typed_fields_are_refused_as_checkpoint_errors(wrong, tmp_path):
    path = tmp_path / "Epoch.7.pth"
    torch.save({"model": {}, "epoch": 1, "model_config": model_config("demo"), "class_names": CLASS_NAMES, **wrong},
               path)
    with pytest.raises(CheckpointError, match=r"Epoch\.7\.pth"):
        load_checkpoint(path)


def test_nested_path_arguments_still_give_a_loadable_checkpoint(tmp_path):
    config = model_config("demo", 3)
    path = save_checkpoint(tmp_path / "Epoch.1.pth", model=build_detector_from_config(config), model_config=config,
                           class_names=["cat", "dog"], epoch=1, args={"data": {"train": tmp_path / "train"}})
    assert load_checkpoint(path)["args"] == {"data": {"train": str(tmp_path / "train")}}


# --- finding the newest -------------------------------------------------------------------------------------


def test_newest_checkpoint_compares_epoch_numbers_not_names(tmp_path):
    for name in ["Epoch.2.pth", "Epoch.9.pth", "Epoch.10.pth",
                 # Not checkpoints of this format, though their names come close:
                 "Epoch.11.pth.tmp", "epoch.12.pth", "Epoch.13.pt", "Epoch.x.pth", "Epoch.14.best.pth",
                 "Epoch.-15.pth", "model_16.pth", "notes.txt"]:
        (tmp_path / name).touch()
    assert checkpoint_name(10) == "Epoch.10.pth"
    assert newest_checkpoint(tmp_path) == tmp_path / "Epoch.10.pth"


def test_no_checkpoint_is_none(tmp_path):
    (tmp_path / "Epoch.pth").touch()
    assert newest_checkpoint(tmp_path) is None
    assert newest_checkpoint(tmp_path / "missing") is None


# --- resuming ------------------------------------------------------------------------------------------------


def test_optimizer_and_cosine_schedule_resume_where_they_left_off(tmp_path):
    epochs, stop_at = 6, 3
    torch.manual_seed(0)
    config = model_config("demo", len(CLASS_NAMES) + 1)
    model = build_detector_from_config(config)
    optimizer, lr_scheduler = seed_optimizer(model, epochs)
    for epoch in range(1, stop_at + 1):
        train_step(model, optimizer, seed=epoch)
        lr_scheduler.step()
    path = save_checkpoint(tmp_path / checkpoint_name(stop_at), model=model, model_config=config,
                           class_names=CLASS_NAMES, epoch=stop_at, optimizer=optimizer, lr_scheduler=lr_scheduler)

    def finish(model, optimizer, lr_scheduler) -> list[float]:
        rates = []
        torch.manual_seed(7)  # the same sampling of anchors and RoIs in both runs
        for epoch in range(stop_at + 1, epochs + 1):
            train_step(model, optimizer, seed=epoch)
            lr_scheduler.step()
            rates.append(optimizer.param_groups[0]["lr"])
        return rates

    state = load_checkpoint(path)
    resumed = model_from_checkpoint(state)
    resumed_optimizer, resumed_scheduler = seed_optimizer(resumed, epochs)
    resumed_optimizer.load_state_dict(state["optimizer"])
    resumed_scheduler.load_state_dict(state["lr_scheduler"])
    assert resumed_scheduler.last_epoch == stop_at
    saved_momenta = [optimizer.state[p]["momentum_buffer"] for p in model.parameters()]
    assert all(torch.equal(resumed_optimizer.state[p]["momentum_buffer"], m)
               for p, m in zip(resumed.parameters(), saved_momenta))

    continued_rates = finish(model, optimizer, lr_scheduler)
    resumed_rates = finish(resumed, resumed_optimizer, resumed_scheduler)

    assert resumed_rates == continued_rates
    cosine = [0.00001 + (0.001 - 0.00001) * (1 + math.cos(math.pi * t / epochs)) / 2
              for t in range(stop_at + 1, epochs + 1)]
    assert resumed_rates == pytest.approx(cosine, rel=1e-9)
    assert resumed_rates[-1] == pytest.approx(0.00001)
    continued = model.state_dict()
    assert all(torch.equal(tensor, continued[name]) for name, tensor in resumed.state_dict().items())
