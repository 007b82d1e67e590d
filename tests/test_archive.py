"""`make archive`: what the .mar holds, and the one-line refusals of bad checkpoints.

That TorchServe serves the archive outside the repository is shown in test_serving.py (and test_handler.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from common.model_archive import (
    MANIFEST, ArchiveReadError, extract_serialized_file, member_names, packed_model_config, read_member,
)
from handler.checkpoint import load_checkpoint
from handler.detector import build_detector_from_config
from project import MODEL_CONFIG, ROOT, SHIPPED_CHECKPOINT
from scripts import make_archive as make_archive_cli
from scripts.archive_source import ArchiveSource, read_archive_source
from scripts.make_archive import ENTRY_FILE, archive_is_current, build_archive
from scripts.serve import start_line_by_hand
from tests.test_import_graph import module_name, project_imports
from training.checkpoints import save_checkpoint
from training.presets import model_config
from training.synthetic import CLASS_NAMES


def make_archive(*args, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.make_archive", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def training_checkpoint(path: Path, **config_overrides) -> Path:
    """A demo checkpoint as training writes it, optimizer state included."""
    config = model_config("demo", len(CLASS_NAMES) + 1, **config_overrides)
    model = build_detector_from_config(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return save_checkpoint(path, model=model, model_config=config, class_names=CLASS_NAMES, epoch=3,
                           optimizer=optimizer, args={"lr": 0.01, "data": "/data/private/photos"})


def never_imported_by_the_worker(archive: Path, folder: Path) -> list[str]:
    """The ``.py`` files packed in ``archive`` that the worker never imports: none of the imports reached from the
    entry file, at any depth of the code (one inside a function counts), names them. ``folder`` is where the
    archive is extracted."""
    with zipfile.ZipFile(archive) as packed:
        packed.extractall(folder)
    # Module name -> its file, as the worker finds it (the model folder is on its sys.path).
    modules = {module_name(path.relative_to(folder)): path for path in folder.rglob("*.py")}
    reached: set[str] = set()
    waiting = [Path(ENTRY_FILE).stem]  # TorchServe imports it from the archive's root
    while waiting:
        module = waiting.pop()
        if module in reached:
            continue
        reached.add(module)
        for name in project_imports(modules[module], module):
            # Importing handler.tagging runs handler/__init__.py first; `from handler.tagging import Tagger` names
            # no module as its last part.
            parts = name.split(".")
            waiting += [prefix for prefix in (".".join(parts[:n]) for n in range(1, len(parts) + 1))
                        if prefix in modules]
    return sorted(path.relative_to(folder).as_posix() for module, path in modules.items() if module not in reached)


def test_the_worker_imports_every_python_file_the_archive_packs(tmp_path):
    archive = build_archive(training_checkpoint(tmp_path / "Epoch.3.pth"), output=tmp_path / "tagger.mar",
                            model_config_file=MODEL_CONFIG)
    packed = sorted(name for name in member_names(archive) if name.endswith(".py"))
    assert "tagger_handler.py" in packed and "handler/tagging.py" in packed, packed

    assert never_imported_by_the_worker(archive, tmp_path / "unpacked") == [], f"packed: {packed}"


def test_a_packed_module_the_worker_never_imports_is_named(tmp_path):
    package = tmp_path / "handler"
    shutil.copytree(ROOT / "handler", package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "training_only.py").write_text("from handler.detector import make_faster_rcnn\n")
    archive = build_archive(training_checkpoint(tmp_path / "Epoch.3.pth"), output=tmp_path / "tagger.mar",
                            model_config_file=MODEL_CONFIG, handler_package=package)

    assert never_imported_by_the_worker(archive, tmp_path / "unpacked") == ["handler/training_only.py"]


def test_archive_holds_each_file_once_and_only_what_serving_reads(tmp_path):
    checkpoint = training_checkpoint(tmp_path / "Epoch.3.pth")
    package = tmp_path / "handler"
    shutil.copytree(ROOT / "handler", package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "tagging.cpython-311.pyc").write_bytes(b"compiled")

    archive = build_archive(checkpoint, output=tmp_path / "store" / "tagger.mar", model_config_file=MODEL_CONFIG,
                            handler_package=package)

    names = member_names(archive)
    manifest = json.loads(read_member(archive, MANIFEST))
    packed_config = read_member(archive, "model-config.yaml")
    assert packed_model_config(archive) == yaml.safe_load(packed_config)
    unpacked = extract_serialized_file(archive, tmp_path / "unpacked")
    assert unpacked == tmp_path / "unpacked" / "Epoch.3.pth"
    # The entry file once, at the root where TorchServe imports it; the rest of the package beside it.
    handler_files = {f"handler/{p.name}" for p in (ROOT / "handler").glob("*.py") if p.name != "tagger_handler.py"}
    assert len(names) == len(set(names))
    assert set(names) == {"MAR-INF/MANIFEST.json", "tagger_handler.py", "model-config.yaml", "Epoch.3.pth",
                          "source.json", *handler_files}
    assert read_archive_source(archive) == ArchiveSource.of(checkpoint)
    assert manifest["model"] == {"modelName": "tagger", "serializedFile": "Epoch.3.pth",
                                 "handler": "tagger_handler.py", "modelVersion": "1.0",
                                 "configFile": "model-config.yaml"}
    assert packed_config == MODEL_CONFIG.read_bytes()

    packed = load_checkpoint(tmp_path / "unpacked" / "Epoch.3.pth")
    original = load_checkpoint(checkpoint)
    assert original["optimizer"] is not None and original["args"] == {"lr": 0.01, "data": "/data/private/photos"}
    assert (packed["optimizer"], packed["lr_scheduler"], packed["args"]) == (None, None, {})
    assert (packed["epoch"], packed["class_names"], packed["model_config"]) == (
        original["epoch"], original["class_names"], original["model_config"])
    # Float16 weights (half the size), equal to the trained ones within float16 rounding.
    assert packed["model"].keys() == original["model"].keys()
    for name, weight in original["model"].items():
        stored = packed["model"][name]
        assert stored.dtype == (torch.float16 if weight.is_floating_point() else weight.dtype), name
        assert torch.allclose(stored.to(weight.dtype), weight, rtol=1e-3, atol=1e-4), name


def test_the_record_hashes_the_bytes_packed_even_when_the_checkpoint_is_replaced_meanwhile(tmp_path, monkeypatch):
    """Training writes Epoch.3.pth anew (os.replace) while `make archive` packs it: source.json must describe the
    checkpoint that was packed, or `make serve` would keep serving the old weights as the new checkpoint. The
    real conversion runs; the replacement is timed to land right after it."""
    checkpoint = training_checkpoint(tmp_path / "Epoch.3.pth")
    packed_bytes = checkpoint.read_bytes()
    newer = training_checkpoint(tmp_path / "newer.pth")  # other random weights
    convert = make_archive_cli.save_serving_checkpoint

    def convert_then_replace(*args, **kwargs):
        converted = convert(*args, **kwargs)
        os.replace(newer, checkpoint)
        return converted

    monkeypatch.setattr(make_archive_cli, "save_serving_checkpoint", convert_then_replace)
    archive = build_archive(checkpoint, output=tmp_path / "tagger.mar", model_config_file=MODEL_CONFIG)

    assert read_archive_source(archive) == ArchiveSource(checkpoint=str(checkpoint.resolve()),
                                                         sha256=hashlib.sha256(packed_bytes).hexdigest())
    packed = load_checkpoint(extract_serialized_file(archive, tmp_path / "unpacked"))
    name = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(packed["model"][name],
                       torch.load(io.BytesIO(packed_bytes), weights_only=True)["model"][name].half())
    assert not archive_is_current(archive, checkpoint=checkpoint, model_config_file=MODEL_CONFIG)


def test_cli_packs_the_newest_checkpoint_of_a_folder(tmp_path):
    models = tmp_path / "model"
    training_checkpoint(models / "Epoch.2.pth")
    training_checkpoint(models / "Epoch.10.pth")
    result = make_archive("--model-dir", models, "--output", tmp_path / "tagger.mar")
    assert result.returncode == 0, result.stderr
    wrote, _, by_hand = result.stdout.splitlines()
    assert wrote == f"wrote {tmp_path / 'tagger.mar'} from {models / 'Epoch.10.pth'}"
    # How to serve it by hand in the repository root: --ts-config, which TorchServe's launcher needs to read
    # config.properties (else "Missing mandatory parameter --model-store"), and files that are there.
    assert by_hand.strip() == start_line_by_hand()
    words = shlex.split(by_hand)
    java_homes = [word.removeprefix("JAVA_HOME=") for word in words if word.startswith("JAVA_HOME=")]
    assert all((Path(home) / "bin" / "java").is_file() for home in java_homes)
    command = words[len(java_homes):]
    assert command[:2] == ["torchserve", "--start"]
    for flag in ("--ts-config", "--log-config"):
        assert (ROOT / command[command.index(flag) + 1]).is_file(), flag
    with zipfile.ZipFile(tmp_path / "tagger.mar") as mar:
        assert json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["serializedFile"] == "Epoch.10.pth"


def test_cli_without_checkpoints_packs_the_shipped_demo_model_once(tmp_path):
    """`make serve` on a fresh clone: no Epoch.N.pth, so the shipped model/demo.pth is packed (no training);
    a second call with --if-changed keeps the archive while it packs the same checkpoint, model config and
    handler files. Run in another folder: the project's files (demo model, model config, handler) are found
    wherever the command runs."""
    (tmp_path / "model").mkdir()
    output = tmp_path / "store" / "tagger.mar"
    first = make_archive("--if-changed", "--model-dir", "model", "--output", output, cwd=tmp_path)
    assert (first.returncode, first.stdout.splitlines()[0]) == (0, f"wrote {output} from {SHIPPED_CHECKPOINT}"), first.stderr
    with zipfile.ZipFile(output) as mar:
        assert json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["serializedFile"] == "demo.pth"
    built = output.stat().st_mtime_ns
    again = make_archive("--if-changed", "--model-dir", tmp_path / "model", "--output", output)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert output.stat().st_mtime_ns == built
    newer = training_checkpoint(tmp_path / "model" / "Epoch.1.pth")
    third = make_archive("--if-changed", "--model-dir", tmp_path / "model", "--output", output)
    assert third.stdout.splitlines()[0] == f"wrote {output} from {newer}", third.stderr


def test_reading_a_file_that_is_no_archive_or_lacks_a_member_fails_in_one_line(tmp_path):
    not_zip = tmp_path / "tagger.mar"
    not_zip.write_text("not an archive")
    with pytest.raises(ArchiveReadError, match=f"^cannot read {not_zip}: File is not a zip file$"):
        read_member(not_zip, MANIFEST)
    with pytest.raises(ArchiveReadError, match="^cannot read .*nowhere.mar: .*No such file"):
        member_names(tmp_path / "nowhere.mar")
    bare = tmp_path / "bare.mar"
    with zipfile.ZipFile(bare, "w") as packed:
        packed.writestr(MANIFEST, json.dumps({"model": {"serializedFile": "Epoch.1.pth"}}))
    with pytest.raises(ArchiveReadError, match=f"^{bare} has no model-config.yaml$"):
        packed_model_config(bare)
    with pytest.raises(ArchiveReadError, match=f"^{bare}: {MANIFEST} names no packed serializedFile$"):
        extract_serialized_file(bare, tmp_path / "out")


def test_cli_refuses_bad_checkpoints_in_one_line_and_keeps_the_old_archive(tmp_path):
    output = tmp_path / "tagger.mar"
    output.write_bytes(b"the previous archive")
    not_torch = tmp_path / "Epoch.1.pth"
    not_torch.write_text("not a checkpoint")
    misfit = training_checkpoint(tmp_path / "Epoch.2.pth")
    state = torch.load(misfit, weights_only=True)
    state["model_config"]["representation_size"] = 128  # the weights were made for 256
    torch.save(state, misfit)

    cases = {
        ("--checkpoint", not_torch): f"make_archive: {not_torch} is not a PyTorch checkpoint",
        ("--checkpoint", misfit): f"make_archive: {misfit}: weights do not fit the model config",
        ("--checkpoint", tmp_path / "nowhere.pth"): f"make_archive: checkpoint not found: {tmp_path / 'nowhere.pth'}",
    }
    for args, start in cases.items():
        result = make_archive(*args, "--output", output)
        assert result.returncode == 1, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(start), (args, result.stderr)
    assert output.read_bytes() == b"the previous archive"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".build-")] == []


def test_if_changed_rebuilds_for_another_checkpoint_even_an_older_one(tmp_path, capsys):
    """`make serve OUTPUT=runs/exp2` after serving runs/exp1: the archive is kept only for the checkpoint it
    packs (resolved path and sha256, recorded in it), whatever the modification times say."""
    exp1, exp2 = tmp_path / "runs" / "exp1", tmp_path / "runs" / "exp2"
    first = training_checkpoint(exp1 / "Epoch.3.pth")
    second = training_checkpoint(exp2 / "Epoch.3.pth")  # other random weights
    output = tmp_path / "store" / "tagger.mar"

    def serve_archive(model_dir: Path) -> str:
        status = make_archive_cli.main(["--if-changed", "--model-dir", str(model_dir), "--output", str(output)])
        assert status == 0
        return capsys.readouterr().out.partition("\n")[0]  # the line that says what was written, if anything

    assert serve_archive(exp1) == f"wrote {output} from {first}"
    built = output.stat().st_mtime_ns
    assert serve_archive(exp1) == "" and output.stat().st_mtime_ns == built  # the same checkpoint: kept
    older = built - 3600 * 10**9
    os.utime(second, ns=(older, older))
    assert serve_archive(exp2) == f"wrote {output} from {second}"
    assert read_archive_source(output) == ArchiveSource(checkpoint=str(second.resolve()),
                                                        sha256=ArchiveSource.of(second).sha256)
    # The same path with other bytes and an old time (a checkpoint copied back with `cp -p`): rebuilt too.
    shutil.copyfile(first, second)
    os.utime(second, ns=(older, older))
    assert serve_archive(exp2) == f"wrote {output} from {second}"
    assert read_archive_source(output).sha256 == ArchiveSource.of(first).sha256


@pytest.mark.parametrize("change", ["handler file", "new handler file", "model config"])
def test_archive_is_stale_when_a_packed_file_differs_whatever_its_time(change, tmp_path):
    """A handler file or the model config restored from git is older than the archive and still differs. The
    model config is packed as model-config.yaml whatever its own name, the one name its readers look for."""
    checkpoint = training_checkpoint(tmp_path / "Epoch.3.pth")
    package, config = tmp_path / "handler", tmp_path / "tagger-settings.yaml"
    shutil.copytree(ROOT / "handler", package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(MODEL_CONFIG, config)
    archive = build_archive(checkpoint, output=tmp_path / "tagger.mar", model_config_file=config,
                            handler_package=package)
    inputs = {"checkpoint": checkpoint, "model_config_file": config, "handler_package": package}
    assert packed_model_config(archive) == yaml.safe_load(MODEL_CONFIG.read_text())
    assert archive_is_current(archive, **inputs)
    changed = {"handler file": package / "tagging.py", "new handler file": package / "extra.py",
               "model config": config}[change]
    with changed.open("a") as file:
        file.write("\n# changed\n")
    old = archive.stat().st_mtime_ns - 3600 * 10**9
    os.utime(changed, ns=(old, old))
    assert not archive_is_current(archive, **inputs)
