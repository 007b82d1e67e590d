"""Packs a checkpoint and the handler package into a self-contained TorchServe model archive (.mar).

``python -m scripts.make_archive [--checkpoint Epoch.N.pth | --model-dir model] [--output archive/tagger.mar]``

The archive holds, at its root: the entry file ``tagger_handler.py``, the whole ``handler/`` package (so
``from handler.tagging import ...`` works in TorchServe's model directory), ``index_to_name.json`` made
from the checkpoint's class names, ``model-config.yaml`` and the checkpoint (weights and model config,
without the optimizer state). Nothing else from the repository is needed to serve it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from handler.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    newest_checkpoint,
    save_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]
HANDLER_PACKAGE = REPO / "handler"
ENTRY_FILE = "tagger_handler.py"


class ArchiveError(RuntimeError):
    """The archive could not be built (missing handler files, torch-model-archiver failed)."""


def index_to_name(class_names: list[str]) -> dict[str, str]:
    """Model label -> class name. Label 0 is the background, never a detection, so it has no entry.

    Args:
        class_names: the checkpoint's names; ``class_names[i]`` is label ``i + 1``.
    """
    return {str(label): name for label, name in enumerate(class_names, start=1)}


def build_archive(
    checkpoint: Path,
    *,
    output: Path,
    model_config_file: Path,
    handler_package: Path = HANDLER_PACKAGE,
    version: str = "1.0",
) -> Path:
    """Builds ``output`` (its stem is the model name), replacing any older archive only when done.

    Args:
        checkpoint: an ``Epoch.N.pth`` of this project.
        output: the ``.mar`` to write, e.g. ``archive/tagger.mar``.
        model_config_file: TorchServe's model config, packed as ``model-config.yaml``.
        handler_package: the ``handler/`` folder; its ``tagger_handler.py`` is the entry file.
        version: the model version TorchServe reports.

    Raises:
        CheckpointError: the checkpoint cannot be read or its weights do not fit its own model config.
        ArchiveError: a file is missing or torch-model-archiver failed.
    """
    state = load_checkpoint(checkpoint)
    try:
        model = model_from_checkpoint(state)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{checkpoint}: weights do not fit the model config: {_first_line(exc)}") from None
    entry_file = handler_package / ENTRY_FILE
    for needed in (entry_file, model_config_file):
        if not needed.is_file():
            raise ArchiveError(f"missing {needed}")

    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    # Built next to the output so the final os.replace stays on one file system.
    with tempfile.TemporaryDirectory(prefix=".build-", dir=output.parent) as tmp:
        work = Path(tmp)
        # torch-model-archiver copies the *contents* of a folder given in --extra-files to the archive
        # root, so the handler package goes one level down to arrive as handler/.
        extra = work / "extra"
        shutil.copytree(handler_package, extra / "handler", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (extra / "index_to_name.json").write_text(json.dumps(index_to_name(state["class_names"]), indent=2) + "\n")
        # Only what serving reads: the optimizer state would double the archive for nothing.
        weights = save_checkpoint(
            work / "weights" / Path(checkpoint).name,
            model=model,
            model_config=state["model_config"],
            class_names=state["class_names"],
            epoch=state["epoch"],
            args=state.get("args"),
        )
        export = work / "export"
        export.mkdir()
        command = [
            sys.executable, "-m", "model_archiver.model_packaging",
            "--model-name", output.stem,
            "--version", version,
            "--serialized-file", str(weights),
            "--handler", str(entry_file),
            "--extra-files", str(extra),
            "--config-file", str(model_config_file),
            "--export-path", str(export),
        ]
        # The archiver stages files in $TMPDIR/<model name>; a private TMPDIR lets two builds run at once.
        env = {**os.environ, "TMPDIR": str(work)}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        built = export / f"{output.stem}.mar"
        if done.returncode != 0 or not built.is_file():
            raise ArchiveError(f"torch-model-archiver failed: {_first_line(done.stderr or done.stdout)}")
        os.replace(built, output)
    return output


def _first_line(text: object) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.make_archive", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, help="the Epoch.N.pth to pack (default: the newest in --model-dir)")
    source.add_argument("--model-dir", type=Path, default=Path("model"), help="folder of Epoch.N.pth files")
    parser.add_argument("--output", type=Path, default=Path("archive/tagger.mar"), help="the .mar to write")
    parser.add_argument("--model-config", type=Path, default=Path("model/model-config.yaml"),
                        help="TorchServe model config to pack")
    args = parser.parse_args(argv)

    checkpoint = args.checkpoint or newest_checkpoint(args.model_dir)
    if checkpoint is None:
        print(f"make_archive: no Epoch.N.pth in {args.model_dir}/: train one (make train) "
              "or name one with CHECKPOINT=path", file=sys.stderr)
        return 1
    try:
        archive = build_archive(checkpoint, output=args.output, model_config_file=args.model_config)
    except (CheckpointError, ArchiveError) as exc:
        print(f"make_archive: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {archive} from {checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
