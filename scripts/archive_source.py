"""Which checkpoint a model archive was packed from: a small JSON record inside the ``.mar``.

The archive holds a float16 serving copy, not the checkpoint's bytes, so it cannot be compared with a
checkpoint directly: ``make_archive --if-changed`` compares this record (the checkpoint's resolved path and
sha256) with the checkpoint it is asked to pack, and ``make serve`` prints it. Modification times are no
guide: ``make serve OUTPUT=runs/exp2`` or ``CHECKPOINT=<older file>`` ask for a file older than the archive.
Kept free of torch so that ``scripts/serve.py`` starts fast.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from common.model_archive import read_member

SOURCE_RECORD = "source.json"  # at the archive's root, beside model-config.yaml
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveSource:
    """The checkpoint an archive was packed from.

    Args:
        checkpoint: its resolved path when the archive was built.
        sha256: the hex digest of its bytes.
    """

    checkpoint: str
    sha256: str

    @classmethod
    def of(cls, checkpoint: Path, *, copy_to: Path | None = None) -> ArchiveSource:
        """The record of ``checkpoint`` as it is now (reads the whole file once: about 1 s per GB).

        Args:
            copy_to: a new file to write the bytes read to: what is packed from it is exactly what the record
                describes, even when the checkpoint is replaced meanwhile (training writing the next epoch).
        """
        resolved = checkpoint.resolve()
        digest = hashlib.sha256()
        with resolved.open("rb") as file, (copy_to.open("xb") if copy_to is not None else nullcontext()) as copy:
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
                if copy is not None:
                    copy.write(chunk)
        return cls(checkpoint=str(resolved), sha256=digest.hexdigest())

    def describe(self) -> str:
        return f"{self.checkpoint} (sha256 {self.sha256[:12]})"

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path


def read_archive_source(archive: Path) -> ArchiveSource | None:
    """The record packed in ``archive``; None for a missing or foreign file, or an archive built before the
    record existed (``make_archive --if-changed`` rebuilds those)."""
    try:  # ArchiveReadError is a ValueError
        fields = json.loads(read_member(archive, SOURCE_RECORD))
        return ArchiveSource(checkpoint=str(fields["checkpoint"]), sha256=str(fields["sha256"]))
    except (KeyError, TypeError, ValueError):
        return None
