"""How many workers a machine runs and how many torch threads each worker uses: the one rule that the
handler applies when it starts and that ``make serve`` prints.

Workers: TorchServe 0.12 itself starts one worker per GPU, or one per CPU core, when neither the model's
``model-config.yaml`` (``minWorkers``) nor ``config.properties`` (``default_workers_per_model``) names a count
(``ConfigManager.getDefaultWorkers``). This module mirrors that rule so the handler knows how many workers
share the machine. Threads: each worker takes an equal share of the cores, so the workers together never run
more torch threads than there are cores (on a 2-core CPU: 2 workers x 1 thread served 19.4 img/s to 8
clients, 1 worker x 2 threads 12.9). An explicit ``minWorkers`` or ``handler.torch_threads`` wins.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

# cgroup v2 CPU quota of this container: "max 100000" (no quota) or "<quota> <period>".
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


@dataclass(frozen=True)
class WorkerLayout:
    """Workers of one model and torch threads per worker on a machine with ``cores`` CPU cores and ``gpus`` GPUs."""

    workers: int
    torch_threads: int
    cores: int
    gpus: int

    def describe(self) -> str:
        """E.g. "2 workers x 1 torch thread (2 CPU cores)"."""
        workers = f"{self.workers} worker{'s' if self.workers != 1 else ''}"
        threads = f"{self.torch_threads} torch thread{'s' if self.torch_threads != 1 else ''}"
        machine = f"{self.cores} CPU core{'s' if self.cores != 1 else ''}"
        if self.gpus:
            machine += f", {self.gpus} GPU{'s' if self.gpus != 1 else ''}"
        return f"{workers} x {threads} ({machine})"


def cpu_cores() -> int:
    """The CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota (as Java counts)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = _CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota: the affinity mask is the limit
    return cores


def worker_layout(
    *, cores: int, gpus: int = 0, workers: int | None = None, torch_threads: int | None = None
) -> WorkerLayout:
    """The layout for a machine; explicit settings win over the rule.

    Args:
        cores: CPU cores available (``cpu_cores()``).
        gpus: GPUs the workers run on; 0 for CPU workers.
        workers: the model config's ``minWorkers``; None for TorchServe's default (one per GPU, else per core).
        torch_threads: the handler's ``torch_threads`` setting; None for an equal share of the cores.
    """
    if cores < 1 or gpus < 0:
        raise ValueError(f"a machine needs at least one core and no negative GPU count, got {cores=}, {gpus=}")
    workers = workers or gpus or cores
    return WorkerLayout(
        workers=workers, torch_threads=torch_threads or max(1, cores // workers), cores=cores, gpus=gpus
    )
