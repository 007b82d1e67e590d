"""Torch threads that follow the load: a worker busy alone takes the cores that idle workers leave, and every
busy worker gets back its equal share as soon as others are busy.

A static layout has to choose: one thread per worker (2 workers x 1 thread served the most images per second
under load on a 2-core CPU) leaves a lone request at one-thread speed, while one worker with every core
serves less under load. Here each worker decides before each batch, from a shared record of which workers
are alive and which are busy, and sets ``torch.set_num_threads`` for that batch.

The record is a folder shared by the workers of one TorchServe front end, holding two files per worker: a
worker holds an exclusive ``flock`` on ``<id>.alive`` for its life and on ``<id>.busy`` for the length of a
batch (with the threads it took written in it). Another worker reads either state by trying a shared lock,
let go at once: a held file refuses it. Why files and ``flock``: the kernel drops the locks of a process
that exits, even under ``kill -9``, so a dead worker's cores come back by themselves and its files read as
dead; a shared-memory counter would stay raised by a worker killed mid-batch, and a socket to the front end
would need a change to TorchServe's Java, which will never be released again.

The record is a help, never a risk: every file-system fault (the folder removed by a tmp cleaner or by hand,
an unwritable ``TMPDIR``, a folder of another user) makes the worker take its equal share for that batch
(logged once), and the next batch joins the record again, re-creating what was removed. The folder is named
after the front end's pid namespace, pid and start time, so front ends in containers sharing ``/tmp`` or a
later one reusing the pid never share it; a worker's start and ``make stop`` remove the folders whose
workers are all gone (a folder with a live worker, from any container, is left alone: its lock is held).

Cores that other processes keep busy (a node shared with other work) are left to them: the threads of a
batch are shared out of the cores the neighbours leave (``handler/neighbours.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import psutil

from handler.neighbours import NeighbourLoad
from handler.text import error_line

logger = logging.getLogger(__name__)
RECORD_PREFIX = "tagger-busy-"
ALIVE, BUSY = ".alive", ".busy"
_places = itertools.count()
JOIN_TRIES = 3
Result = TypeVar("Result")


def front_end_key(pid: int) -> str:
    """What tells one front end from every other that shares a temp folder: its pid namespace (containers
    sharing ``/tmp`` may each run theirs as the same pid), its pid and its start time (a later process may
    reuse the pid)."""
    try:
        namespace = os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        namespace = 0  # no /proc (macOS): one pid namespace
    try:
        started = f"{psutil.Process(pid).create_time():.2f}"
    except psutil.Error:
        started = "gone"
    return f"{namespace}-{pid}-{started}"


def record_folder(front_end_pid: int, *, tmp_dir: Path | None = None) -> Path:
    """The busy record of the workers that the TorchServe front end ``front_end_pid`` started.

    Args:
        front_end_pid: the front end (a worker's parent).
        tmp_dir: the front end's ``TMPDIR``; None for this process's temp folder.
    """
    return (tmp_dir or Path(tempfile.gettempdir())) / f"{RECORD_PREFIX}{front_end_key(front_end_pid)}"


def _is_held(fd: int) -> bool:
    """Whether another process (or place) holds the exclusive lock of the file: a shared lock is refused."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _file_is_held(path: Path) -> bool:
    """``_is_held`` of a file by its path; a file that cannot be opened (gone since the listing) is not held."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        return _is_held(fd)
    finally:
        os.close(fd)


def _check_owned(folder: Path) -> None:
    """Refuses a record folder that is not a real folder of this user (a symlink, or another user's)."""
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise PermissionError(f"{folder} is not a folder of this user")


def sweep_stale_records(tmp_dir: Path | None = None) -> list[Path]:
    """Removes this user's record folders in ``tmp_dir`` whose workers are all gone (no ``.alive`` file held):
    those of stopped servers, and of earlier versions of this module. Returns the folders removed.

    Args:
        tmp_dir: the temp folder to sweep; None for this process's.
    """
    removed = []
    for folder in (tmp_dir or Path(tempfile.gettempdir())).glob(f"{RECORD_PREFIX}*"):
        try:
            _check_owned(folder)
            if any(_file_is_held(path) for path in folder.glob(f"*{ALIVE}")):
                continue
        except OSError:
            continue  # another user's, or gone
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def busy_threads(folder: Path) -> list[int]:
    """The torch threads of each worker busy right now (read by ``make bench`` while it loads the server)."""
    threads = []
    for path in folder.glob(f"*{BUSY}"):
        with contextlib.suppress(OSError, ValueError), path.open("rb") as file:
            if _is_held(file.fileno()):
                threads.append(int(file.read() or b"1"))
    return threads


class CoreSharing:
    """One worker's place in the busy record. Never raises: a record that cannot be used gives the equal share.

    Args:
        folder: the record (``record_folder`` of the worker's front end).
        cores: the CPU cores the workers share (``sizing.cpu_cores()``).
        workers: the workers expected to share them, until the record has counted those alive.
        neighbours: the cores other processes keep busy, left to them (None: not measured, every core is
            the workers').
    """

    def __init__(self, *, folder: Path, cores: int, workers: int, neighbours: NeighbourLoad | None = None) -> None:
        self.folder, self.cores, self.neighbours = folder, cores, neighbours
        self.workers = workers  # the workers alive at the last reading of the record: the equal share's divisor
        # "<pid>.<n>": a process may hold several places (a worker holds one; tests play several workers).
        self.name = f"{os.getpid()}.{next(_places)}"
        self._alive: int | None = None  # descriptors of this worker's two files while it is in the record
        self._busy: int | None = None
        self._others: dict[str, tuple[int, int]] = {}  # another worker's file name -> (inode, open descriptor)
        self._backlog = False
        self._fault: str | None = None  # the record's fault, logged when it began; None while it works
        self._guarded(self._sweep_and_join)

    # ---- joining and leaving ----

    def _sweep_and_join(self) -> None:
        sweep_stale_records(self.folder.parent)
        self._join()

    def _join(self) -> None:
        """Creates (or re-creates) the folder and this worker's two files, and holds the life lock. A dead
        worker's files (its ``.alive`` not held) are removed on the way."""
        for _ in range(JOIN_TRIES):
            self._leave()
            self.folder.mkdir(mode=0o700, exist_ok=True)
            _check_owned(self.folder)
            for alive in self.folder.glob(f"*{ALIVE}"):
                if alive.name != f"{self.name}{ALIVE}" and not _file_is_held(alive):
                    for path in (alive, alive.with_suffix(BUSY)):
                        path.unlink(missing_ok=True)
            self._alive = self._open_own(ALIVE)
            fcntl.flock(self._alive, fcntl.LOCK_EX)
            self._busy = self._open_own(BUSY)
            if self._in_record():
                return
            # Swept between the open and the lock by a worker that took the new file for a dead one's.
        raise FileNotFoundError(f"{self.folder / self.name} was removed while joining, {JOIN_TRIES} times")

    def _open_own(self, suffix: str) -> int:
        return os.open(self.folder / f"{self.name}{suffix}", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)

    def _in_record(self) -> bool:
        """Whether this worker's files are still the ones in the folder (nothing removed or replaced them)."""
        if self._alive is None or self._busy is None:
            return False
        for fd, suffix in ((self._alive, ALIVE), (self._busy, BUSY)):
            try:
                if os.stat(self.folder / f"{self.name}{suffix}").st_ino != os.fstat(fd).st_ino:
                    return False
            except FileNotFoundError:
                return False
        return True

    def _leave(self) -> None:
        """Closes every descriptor (the kernel drops this worker's locks with them)."""
        for _, fd in self._others.values():
            os.close(fd)
        self._others.clear()
        for fd in (self._alive, self._busy):
            if fd is not None:
                os.close(fd)
        self._alive = self._busy = None

    def close(self) -> None:
        """Leaves the record: this worker's files go, and the folder with the last of them."""
        with contextlib.suppress(OSError):
            if self._in_record():
                for suffix in (ALIVE, BUSY):
                    (self.folder / f"{self.name}{suffix}").unlink()
        self._leave()
        with contextlib.suppress(OSError):
            self.folder.rmdir()  # only when empty: other workers are still in it otherwise

    # ---- one batch ----

    @contextlib.contextmanager
    def busy(self, *, backlog: bool = False) -> Iterator[int]:
        """Marks this worker busy for one batch (decoding and answering included, so that the others leave
        it its share meanwhile) and sets its threads; yields them. ``share_now`` sets them again.

        Args:
            backlog: requests are queuing (TorchServe filled a batch of more than one): the other workers are
                busy or about to be, between two of their batches for a few ms at most, so this batch takes its
                equal share whatever the record says. A worker that took every core in such a gap would run
                more threads than cores until its model call ends (measured: 3 threads on 2 cores in 11% of
                the time at 8 clients, and 12% fewer images per second than the fixed layout).
        """
        self._backlog = backlog
        locked = self._guarded(self._lock_busy)
        try:
            yield self.share_now()
        finally:
            if locked:
                self._guarded(lambda: fcntl.flock(self._busy, fcntl.LOCK_UN))

    def _lock_busy(self) -> bool:
        if not self._in_record():  # removed (a tmp cleaner, by hand) or never joined: join again
            self._join()
        fcntl.flock(self._busy, fcntl.LOCK_EX)
        return True

    def share_now(self) -> int:
        """Sets this busy worker's torch threads to the cores the neighbours leave, shared equally among the
        workers busy now, this one included (at least 1), or among all those alive in a backlog, and returns them. Called before
        each model call of a batch: a worker that began alone gives cores back at its next call once others
        are busy. Without a usable record: the equal share among the workers last counted."""
        counted = self._guarded(self._read_record)
        if counted is None:
            sharing, worker_pids = self.workers, {os.getpid()}
        else:
            busy_others, self.workers, worker_pids = counted
            sharing = self.workers if self._backlog else 1 + busy_others
        taken = self.neighbours.update(worker_pids) if self.neighbours is not None else 0
        threads = max(1, (self.cores - taken) // sharing)
        import torch  # here: `make stop` imports this module for its sweep, and needs no torch
        if self._busy is not None:  # for `make bench`'s sampling (busy_threads)
            self._guarded(lambda: os.pwrite(self._busy, str(threads).encode().ljust(4), 0))
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads

    def _read_record(self) -> tuple[int, int, set[int]]:
        """(other workers busy now, workers alive with this one, their pids): TorchServe's real worker count,
        whatever started them (``minWorkers``, ``default_workers_per_model``, one per GPU, a scale-up)."""
        if self._busy is None:
            raise FileNotFoundError(f"{self.folder} could not be joined")
        entries = {entry.name: entry.inode() for entry in os.scandir(self.folder)
                   if not entry.name.startswith(self.name + ".")}
        for name in [name for name, (inode, _) in self._others.items() if entries.get(name) != inode]:
            os.close(self._others.pop(name)[1])  # gone, or replaced by a file of the same name
        held = {}
        for name, inode in entries.items():
            if name not in self._others:
                try:
                    self._others[name] = (inode, os.open(self.folder / name, os.O_RDONLY | os.O_NOFOLLOW))
                except OSError:
                    continue  # removed since the listing
            held[name] = _is_held(self._others[name][1])
        busy = sum(1 for name, is_held in held.items() if is_held and name.endswith(BUSY))
        alive = [name for name, is_held in held.items() if is_held and name.endswith(ALIVE)]
        pids = {int(pid) for name in alive if (pid := name.split(".")[0]).isdigit()}
        return busy, 1 + len(alive), {os.getpid(), *pids}

    def _guarded(self, step: Callable[[], Result]) -> Result | None:
        """``step``'s result, or None after a file-system fault, which is logged when it begins (and its end
        when the record works again), not once per batch."""
        try:
            result = step()
        except OSError as fault:
            if self._fault is None:
                self._fault = error_line(fault, with_type=True)
                logger.warning("the busy record %s cannot be used (%s): each batch takes the equal share of %d "
                               "cores among %d workers until it can", self.folder, self._fault, self.cores,
                               self.workers)
            return None
        if self._fault is not None and self._in_record():
            logger.warning("the busy record %s works again (after: %s)", self.folder, self._fault)
            self._fault = None
        return result
