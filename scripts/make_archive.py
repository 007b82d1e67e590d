"""Packs a checkpoint and the handler package into a self-contained TorchServe model archive (.mar).

``python -m scripts.make_archive [--checkpoint Epoch.N.pth | --model-dir model] [--output PATH] [--if-changed]``

Without ``--checkpoint`` it packs the newest ``Epoch.N.pth`` of ``--model-dir``, or, when there is none, the
shipped demo model (``model/demo.pth``): a fresh clone serves without training. The archive holds each file
once, at its root: the entry file ``tagger_handler.py``, the rest of the ``handler/`` package (so
``from handler.tagging import ...`` works in TorchServe's model folder), ``model-config.yaml`` and the serving
copy of the checkpoint: float16 weights, model config, class names and epoch, without the optimizer state or
the training run's arguments and data paths, and ``source.json``: which checkpoint it was packed from (see
``scripts/archive_source.py``). The output path defaults to the one ``config.properties`` serves
(``model_store``/``load_models``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from client.config import ServerConfigError, read_server_config
from common.model_archive import PACKED_MODEL_CONFIG, ArchiveReadError, member_names, read_member
from handler.checkpoint import CheckpointError, load_checkpoint
from handler.detector import build_detector_from_config
from handler.text import last_line
from project import HANDLER_PACKAGE, MODEL_CONFIG, SERVER_CONFIG, SHIPPED_CHECKPOINT
from scripts.archive_source import SOURCE_RECORD, ArchiveSource, read_archive_source
from scripts.serve import start_line_by_hand
from training.checkpoints import newest_checkpoint, save_serving_checkpoint

ENTRY_FILE = "tagger_handler.py"
MODEL_VERSION = "1.0"  # the version TorchServe reports for the model (its name is the archive's, load_models)


class ArchiveError(RuntimeError):
    """The archive could not be built (missing handler files, torch-model-archiver failed)."""


@dataclass(frozen=True, kw_only=True)
class ArchiverInputs:
    """The files torch-model-archiver packs, staged in a private folder."""

    weights: Path  # --serialized-file: the serving copy of the checkpoint
    entry_file: Path  # --handler
    extra: Path  # --extra-files: a folder whose contents land at the archive's root
    model_config: Path  # --config-file


def build_archive(
    checkpoint: Path,
    *,
    output: Path,
    model_config_file: Path,
    handler_package: Path = HANDLER_PACKAGE,
) -> Path:
    """Builds ``output`` (its stem is the model name), replacing any older archive only when done.

    Args:
        checkpoint: an ``Epoch.N.pth`` of this project (or its serving copy, such as ``model/demo.pth``).
        output: the ``.mar`` to write, e.g. ``archive/tagger.mar``.
        model_config_file: TorchServe's model config, packed as ``model-config.yaml`` whatever its own name.
        handler_package: the ``handler/`` folder; its ``tagger_handler.py`` is the entry file.

    Raises:
        CheckpointError: the checkpoint cannot be read or its weights do not fit its own model config.
        ArchiveError: a file is missing or torch-model-archiver failed.
    """
    checkpoint = Path(checkpoint)
    entry_file = handler_package / ENTRY_FILE
    for needed in (entry_file, model_config_file):
        if not needed.is_file():
            raise ArchiveError(f"missing {needed}")

    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    # Built next to the output so the final os.replace stays on one file system.
    with tempfile.TemporaryDirectory(prefix=".build-", dir=output.parent) as tmp:
        work = Path(tmp)
        # The checkpoint is read once, into a private copy that is hashed as it is written: the record names
        # the very bytes packed, also when training replaces the checkpoint meanwhile.
        read_once = work / "source" / checkpoint.name
        source = copy_checkpoint(checkpoint, read_once)
        weights = write_serving_weights(read_once, work / "weights" / checkpoint.name, shown_as=checkpoint)
        extra = work / "extra"
        stage_extra_files(extra, handler_package=handler_package, source=source)
        # torch-model-archiver packs --config-file under its own file name; the readers of an archive look
        # for one name (common/model_archive.py).
        packed_config = work / PACKED_MODEL_CONFIG
        shutil.copyfile(model_config_file, packed_config)
        inputs = ArchiverInputs(weights=weights, entry_file=entry_file, extra=extra, model_config=packed_config)
        os.replace(run_archiver(inputs, model_name=output.stem, work=work), output)
    return output


def copy_checkpoint(checkpoint: Path, copy: Path) -> ArchiveSource:
    """Copies ``checkpoint`` to ``copy``; returns the record of the bytes copied.

    Raises:
        CheckpointError: no such file.
    """
    copy.parent.mkdir(parents=True)
    try:
        return ArchiveSource.of(checkpoint, copy_to=copy)
    except (FileNotFoundError, IsADirectoryError):
        raise CheckpointError(f"checkpoint not found: {checkpoint}") from None


def write_serving_weights(source: Path, output: Path, *, shown_as: Path) -> Path:
    """Writes the serving copy of the checkpoint ``source`` to ``output`` and checks that its weights fit its model.

    Raises:
        CheckpointError: the checkpoint cannot be read or its weights do not fit its own model config; the
            message names ``shown_as``.
    """
    # Float16 halves the file and the worker's load time; the model loads the weights into its float32
    # parameters, so detections move by rounding only (README: "The model archive").
    weights = save_serving_checkpoint(source, output, float16=True, shown_as=shown_as)
    check_weights_fit_config(weights, source=shown_as)
    return weights


def stage_extra_files(extra: Path, *, handler_package: Path, source: ArchiveSource) -> None:
    """Fills ``extra`` with what the archive holds beside the entry file: the handler package and the source
    record."""
    # torch-model-archiver copies the *contents* of a folder given in --extra-files to the archive root, so
    # the handler package goes one level down to arrive as handler/.
    for name, path in packed_package_files(handler_package).items():
        (extra / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, extra / name)
    source.write(extra / SOURCE_RECORD)


def run_archiver(inputs: ArchiverInputs, *, model_name: str, work: Path) -> Path:
    """Runs torch-model-archiver on ``inputs``; returns the ``.mar`` it wrote into ``work``.

    Raises:
        ArchiveError: torch-model-archiver failed.
    """
    export = work / "export"
    export.mkdir()
    command = [
        sys.executable, "-m", "model_archiver.model_packaging",
        "--model-name", model_name,
        "--version", MODEL_VERSION,
        "--serialized-file", str(inputs.weights),
        "--handler", str(inputs.entry_file),
        "--extra-files", str(inputs.extra),
        "--config-file", str(inputs.model_config),
        "--export-path", str(export),
    ]
    # The archiver stages files in $TMPDIR/<model name>; a private TMPDIR lets two builds run at once.
    env = {**os.environ, "TMPDIR": str(work)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    built = export / f"{model_name}.mar"
    if done.returncode != 0 or not built.is_file():
        raise ArchiveError(f"torch-model-archiver failed: {last_line(done.stderr or done.stdout)}")
    return built


def check_weights_fit_config(path: Path, *, source: Path) -> None:
    """Loads the checkpoint's weights into its model built on the meta device: every name and shape is
    checked, and no second copy of the weights is made (they stay memory-mapped from the file).

    Raises:
        CheckpointError: a missing, unexpected or misshapen weight, named after ``source``.
    """
    state = load_checkpoint(path, mmap=True)
    try:
        with torch.device("meta"):
            model = build_detector_from_config(state["model_config"])
        model.load_state_dict(state["model"], assign=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: weights do not fit the model config: {last_line(exc)}") from None


def packed_package_files(handler_package: Path) -> dict[str, Path]:
    """The handler package's files the archive holds, by their name in it (``handler/...``): all but caches and
    the entry file, which is ``--handler`` (packed at the root, where TorchServe imports it)."""
    files = {}
    for path in sorted(handler_package.rglob("*")):
        relative = path.relative_to(handler_package)
        cache = "__pycache__" in relative.parts or path.suffix == ".pyc"
        if path.is_file() and not cache and path.name != ENTRY_FILE:
            files[f"handler/{relative.as_posix()}"] = path
    return files


def archive_is_current(
    archive: Path, *, checkpoint: Path, model_config_file: Path, handler_package: Path = HANDLER_PACKAGE,
) -> bool:
    """Whether ``archive`` was packed from ``checkpoint`` as it is now (the path and sha256 in its record) and
    holds the model config and the handler files as they are now, byte for byte.

    Contents, not modification times: another run's checkpoint, or a file restored from git, can be older
    than the archive and still differ from what it packs.
    """
    # The model config and --handler are packed at the root (build_archive).
    wanted = {PACKED_MODEL_CONFIG: model_config_file, ENTRY_FILE: handler_package / ENTRY_FILE,
              **packed_package_files(handler_package)}
    try:
        source = read_archive_source(archive)
        # The path before the sha256: hashing a large checkpoint takes about 1 s per GB.
        if (source is None or not checkpoint.is_file() or source.checkpoint != str(checkpoint.resolve())
                or source != ArchiveSource.of(checkpoint)):
            return False
        code = {name for name in member_names(archive) if name in wanted or name.startswith("handler/")}
        return code == wanted.keys() and all(read_member(archive, name) == path.read_bytes()
                                             for name, path in wanted.items())
    except (OSError, ArchiveReadError):
        return False


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint`` / ``--model-dir``, for every tool that packs a checkpoint (see ``checkpoint_to_pack``)."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, help="the checkpoint to pack (default: the newest in --model-dir)")
    source.add_argument("--model-dir", type=Path, default=Path("model"),
                        help=f"folder of Epoch.N.pth files; without any, {SHIPPED_CHECKPOINT} is packed")


def checkpoint_to_pack(args: argparse.Namespace) -> Path:
    """The named checkpoint, else the newest ``Epoch.N.pth`` of the model folder, else the shipped demo model."""
    return args.checkpoint or newest_checkpoint(args.model_dir) or SHIPPED_CHECKPOINT


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts.make_archive", description=__doc__.splitlines()[0])
    add_checkpoint_arguments(parser)
    parser.add_argument("--output", type=Path, help=f"the .mar to write (default: the archive {SERVER_CONFIG} serves)")
    parser.add_argument("--model-config", type=Path, default=MODEL_CONFIG, help="TorchServe model config to pack")
    parser.add_argument("--if-changed", action="store_true",
                        help="keep the archive when it packs this checkpoint (same path and sha256), model config "
                             "and handler files")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    checkpoint = checkpoint_to_pack(args)
    try:
        output = args.output or read_server_config(SERVER_CONFIG).archive
        if args.if_changed and archive_is_current(output, checkpoint=checkpoint, model_config_file=args.model_config):
            return 0
        archive = build_archive(checkpoint, output=output, model_config_file=args.model_config)
    except (CheckpointError, ArchiveError, ServerConfigError) as exc:
        print(f"make_archive: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {archive} from {checkpoint}")
    print(f"serve it: make serve, or by hand in the repository root with .venv active:\n  {start_line_by_hand()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
