"""Torch threads that follow the load: a worker busy alone takes the cores that idle workers leave, and every
busy worker gets back its equal share as soon as others are busy.

A static layout has to choose: one thread per worker (2 workers x 1 thread served the most images per second
under load on a 2-core CPU) leaves a lone request at one-thread speed, while one worker with every core
serves less under load. Here each worker decides before each batch, from a shared record of which workers
are busy, and sets ``torch.set_num_threads`` for that batch.

The record is a folder shared by the workers of one TorchServe (named after the front end, their parent
process) holding one file per worker. A worker holds an exclusive ``flock`` on its file for the length of a
batch, with the threads it took written in it; it counts the busy workers by trying a shared lock on each
other file, let go at once (a busy worker's file refuses it). The kernel drops the locks of a process that
exits, so a worker that dies mid-call gives its cores back by itself, and a file left by a dead worker counts
as idle.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import tempfile
from pathlib import Path
from typing import Iterator

import psutil
import torch

RECORD_PREFIX = "tagger-busy-"
_places = itertools.count()


def record_folder(front_end_pid: int) -> Path:
    """The busy record of the workers that the TorchServe front end ``front_end_pid`` started."""
    return Path(tempfile.gettempdir()) / f"{RECORD_PREFIX}{front_end_pid}"


def _is_held(fd: int) -> bool:
    """Whether another process holds the exclusive lock of the file (a shared lock is refused)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def busy_threads(folder: Path) -> list[int]:
    """The torch threads of each worker busy right now (read by ``make bench`` while it loads the server)."""
    threads = []
    for path in folder.glob("*"):
        with contextlib.suppress(OSError), path.open("rb") as file:
            if _is_held(file.fileno()):
                threads.append(int(file.read() or b"1"))
    return threads


class CoreSharing:
    """One worker's place in the busy record.

    Args:
        folder: the record (``record_folder`` of the worker's front end).
        cores: the CPU cores the workers share (``sizing.cpu_cores()``).
        workers: how many workers share them.
    """

    def __init__(self, *, folder: Path, cores: int, workers: int) -> None:
        self.folder, self.cores, self.workers = folder, cores, workers
        self._backlog = False
        folder.mkdir(mode=0o700, exist_ok=True)
        for left in folder.glob("*"):  # files of workers that died (they count as idle, but pile up)
            pid = left.name.split(".")[0]
            if pid.isdigit() and not psutil.pid_exists(int(pid)):
                left.unlink(missing_ok=True)
        # "<pid>.<n>": a process may hold several places (a worker holds one; tests play several workers).
        self.path = folder / f"{os.getpid()}.{next(_places)}"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._others: dict[str, int] = {}  # file name -> open descriptor, kept across batches

    def _busy_others(self) -> int:
        names = {entry.name for entry in os.scandir(self.folder)} - {self.path.name}
        for gone in self._others.keys() - names:
            os.close(self._others.pop(gone))
        busy = 0
        for name in names:
            if name not in self._others:
                try:
                    self._others[name] = os.open(self.folder / name, os.O_RDONLY)
                except OSError:
                    continue  # removed since the listing
            busy += _is_held(self._others[name])
        return busy

    @contextlib.contextmanager
    def busy(self, *, backlog: bool = False) -> Iterator[int]:
        """Marks this worker busy for one batch (decoding and answering included, so that the others leave
        it its share meanwhile) and sets its threads; yields them. ``share_now`` sets them again.

        Args:
            backlog: requests are queuing (TorchServe filled the batch): the other workers are busy or about
                to be, between two of their batches for a few ms at most, so this batch takes its equal share
                whatever the record says. A worker that took every core in such a gap would run more threads
                than cores until its model call ends (measured: 3 threads on 2 cores in 11% of the time at 8
                clients, and 12% fewer images per second than the fixed layout).
        """
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._backlog = backlog
        try:
            yield self.share_now()
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def share_now(self) -> int:
        """Sets this busy worker's torch threads to the cores shared equally among the workers busy now,
        this one included (at least 1), or among all of them in a backlog, and returns them. Called before
        each model call of a batch: a worker that began alone gives cores back at its next call once others
        are busy."""
        busy = self.workers if self._backlog else 1 + self._busy_others()
        threads = max(1, self.cores // busy)
        os.pwrite(self._fd, str(threads).encode().ljust(4), 0)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads

    def close(self) -> None:
        for fd in self._others.values():
            os.close(fd)
        self._others.clear()
        os.close(self._fd)
        with contextlib.suppress(OSError):
            self.path.unlink()
