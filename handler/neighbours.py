"""How many of the workers' cores other processes keep busy: the neighbours of a node shared with other work.

PyTorch's OpenMP threads wait for each other at the end of every parallel operation, so a worker that runs as
many threads as there are cores while another process holds one of them waits, operation after operation,
for a thread the kernel has descheduled: on a 2-core machine with one core kept busy, the demo model took
102 ms per image at 2 threads and 77 ms at 1 (one run each, AMD EPYC; more load made 2 threads worse still).
So a worker takes only the cores its neighbours leave (``handler/core_sharing.py``).

Read from ``/proc/stat``: the CPU time the worker's cores spent busy over the last interval, less the CPU time
of the workers themselves (``/proc/<pid>/stat``), over the interval's length. Linux only; elsewhere, and
where a cgroup CPU quota (a container's CPU limit) bounds the workers more tightly than their cores (the
host's other load is then not theirs to dodge), no neighbour is counted.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

WINDOW_S = 0.25  # the shortest interval measured: /proc counts in ticks of 10 ms
PROC = Path("/proc")


@dataclass(frozen=True)
class _Reading:
    at: float  # time.monotonic()
    busy_ticks: int  # the cores' busy time (all but idle and iowait), over all of them
    worker_ticks: dict[int, int]  # pid -> its user + system time


def _busy_ticks(cpus: frozenset[int]) -> int:
    busy = 0
    for line in (PROC / "stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(field) for field in fields[:8]]  # user nice system idle iowait irq softirq steal
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy


def _process_ticks(pid: int) -> int | None:
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None  # gone
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


class NeighbourLoad:
    """The cores other processes than the workers keep busy, as a whole number, measured from one call to
    the next (at least ``WINDOW_S`` apart; between, the last figure stands).

    Args:
        cores: the cores the workers share (``sizing.cpu_cores()``).
    """

    def __init__(self, *, cores: int) -> None:
        self.cores = cores
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        # ``cores`` is the affinity mask capped by the cgroup's quota and cpuset: fewer than the mask means a
        # quota bounds the workers, and the host's other load is not theirs to dodge.
        measurable = (PROC / "stat").is_file() and len(affinity) == cores
        self._cpus = frozenset(affinity) if measurable else frozenset()
        self._last: _Reading | None = None
        self.measured = 0.0  # the cores the neighbours kept busy over the last interval
        self.busy_cores = 0  # ... rounded, and at most all but one

    def update(self, worker_pids: Iterable[int]) -> int:
        """The cores the neighbours keep busy (0 where that cannot be measured), read again when the last
        reading is ``WINDOW_S`` old.

        Args:
            worker_pids: the workers' processes (this one included): their own CPU time is not a neighbour's.
        """
        if not self._cpus:
            return 0
        now = time.monotonic()
        if self._last is not None and now - self._last.at < WINDOW_S:
            return self.busy_cores
        try:
            reading = _Reading(at=now, busy_ticks=_busy_ticks(self._cpus), worker_ticks={
                pid: ticks for pid in set(worker_pids) if (ticks := _process_ticks(pid)) is not None})
        except (OSError, ValueError, IndexError):
            return self.busy_cores  # an unreadable /proc: the last figure stands
        if self._last is not None:
            workers = sum(ticks - self._last.worker_ticks[pid] for pid, ticks in reading.worker_ticks.items()
                          if pid in self._last.worker_ticks)
            seconds = (reading.at - self._last.at) * os.sysconf("SC_CLK_TCK")
            self.measured = max(0, reading.busy_ticks - self._last.busy_ticks - workers) / seconds
            self.busy_cores = min(self.cores - 1, int(self.measured + 0.5))  # a worker always keeps one core
        self._last = reading
        return self.busy_cores
