"""How many workers a machine runs and how many torch threads each worker uses: the one rule that the
handler applies when it starts and that ``make serve`` prints.

Workers: TorchServe 0.12 takes ``minWorkers``/``maxWorkers`` from the model's ``model-config.yaml`` only as a
pair with ``maxWorkers >= minWorkers > 0`` (``ModelServer.initModelStore``); otherwise it starts its default
count: ``default_workers_per_model`` of ``config.properties``, else one worker per GPU, else one per CPU core
(``ConfigManager.getDefaultWorkers``), whatever ``deviceType`` says. ``configured_workers`` mirrors the first
rule and ``worker_layout`` assumes one worker per core otherwise: the threads a CPU worker starts with. From its
first batch on, a CPU worker counts the workers really alive (``handler/core_sharing.py``). Threads: each worker takes an equal share
of the cores, so the workers together never run more torch threads than there are cores (on a 2-core CPU:
2 workers x 1 thread served 19.4 img/s to 8 clients, 1 worker x 2 threads 12.9). ``handler.torch_threads``
wins.

Cores: counted as the JVM of TorchServe counts them (OpenJDK 17 ``CgroupSubsystem::active_processor_count``),
so the handler and Java agree inside a container: the affinity mask, capped by the CPU quota of the
process's cgroup (v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` or v2 ``cpu.max``, rounded up) and by its
``cpuset``. Like Java's default, ``cpu.shares`` is not a limit.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping


@dataclass(frozen=True)
class WorkerLayout:
    """Workers of one model and torch threads per worker on a machine with ``cores`` CPU cores and ``gpus`` GPUs."""

    workers: int
    torch_threads: int
    cores: int
    gpus: int
    # CPU workers whose threads follow the load (handler/core_sharing.py): ``torch_threads`` each when all
    # are busy, up to every core for a worker busy alone. False on GPUs, for one worker, or with the
    # handler's explicit ``torch_threads`` setting.
    follows_load: bool = False

    @property
    def label(self) -> str:
        """Workers x threads in short: "2x1", or "2x1-2" where the threads follow the load."""
        threads = f"{self.torch_threads}-{self.cores}" if self.follows_load else str(self.torch_threads)
        return f"{self.workers}x{threads}"

    def describe(self) -> str:
        """E.g. "2 workers x 1 torch thread (2 CPU cores)", "2 workers x 1 torch thread, 2 when busy alone (...)"."""
        workers = f"{self.workers} worker{'s' if self.workers != 1 else ''}"
        threads = f"{self.torch_threads} torch thread{'s' if self.torch_threads != 1 else ''}"
        if self.follows_load:
            threads += f", {self.cores} when busy alone"
        machine = f"{self.cores} CPU core{'s' if self.cores != 1 else ''}"
        if self.gpus:
            machine += f", {self.gpus} GPU{'s' if self.gpus != 1 else ''}"
        return f"{workers} x {threads} ({machine})"


@dataclass(frozen=True)
class _Mount:
    """One cgroup line of ``/proc/self/mountinfo``: which part of the hierarchy is mounted where."""

    root: str  # the group the mount shows at its mount point ("/" unless it is a container's own group)
    mount_point: str
    version: int  # 1 or 2
    controllers: frozenset[str]  # v1 only: the controllers of this hierarchy


def _read_mounts(proc: Path) -> list[_Mount]:
    mounts = []
    for line in (proc / "self" / "mountinfo").read_text().splitlines():
        fields = line.split()
        after = fields[fields.index("-") + 1:]  # filesystem type, source, super options
        if len(after) >= 3 and after[0] in ("cgroup", "cgroup2"):
            mounts.append(_Mount(root=fields[3], mount_point=fields[4], version=2 if after[0] == "cgroup2" else 1,
                                 controllers=frozenset(after[2].split(","))))
    return mounts


def _group_dir(mount: _Mount, group: str, root: Path) -> Path:
    """Where the files of ``group`` (a path of ``/proc/self/cgroup``) are, as Java finds them
    (``CgroupV1Controller::set_subsystem_path``)."""
    if mount.root == "/":
        inside = group
    elif group.startswith(mount.root + "/"):
        inside = group[len(mount.root):]  # a group nested in the one mounted
    else:
        inside = "/"  # the mount shows the container's own group (its root is the group itself)
    return root / mount.mount_point.lstrip("/") / inside.lstrip("/")


def _cpu_dirs(proc: Path, root: Path) -> tuple[int, Path | None, Path | None]:
    """The cgroup version and the directories of this process's ``cpu`` and ``cpuset`` groups (None where
    not mounted). Version 1 where ``/proc/self/cgroup`` names a v1 ``cpu`` hierarchy (legacy or hybrid, as
    Java decides), else version 2."""
    groups = {}  # controller ("" for the v2 hierarchy) -> group path
    for line in (proc / "self" / "cgroup").read_text().splitlines():
        _, controllers, group = line.split(":", 2)
        for controller in controllers.split(","):
            groups[controller] = group
    mounts = _read_mounts(proc)
    version = 1 if "cpu" in groups else 2

    def group_dir(controller: str) -> Path | None:
        key = controller if version == 1 else ""
        found = [m for m in mounts if m.version == version and (version == 2 or controller in m.controllers)]
        return _group_dir(found[0], groups[key], root) if found and key in groups else None

    return version, group_dir("cpu"), group_dir("cpuset")


def _cpu_list_size(text: str) -> int:
    """CPUs in a kernel CPU list such as "0-3,8"."""
    ranges = [part.split("-") for part in text.strip().split(",") if part]
    return sum(int(bounds[-1]) - int(bounds[0]) + 1 for bounds in ranges)


def _quota_cpus(version: int, cpu_dir: Path | None) -> int | None:
    """The CPU quota over its period, rounded up as Java rounds it; None without a (readable) quota."""
    if cpu_dir is None:
        return None
    try:
        if version == 1:
            quota, period = ((cpu_dir / name).read_text().strip() for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
        else:
            quota, period = (cpu_dir / "cpu.max").read_text().split()[:2]
        return max(1, math.ceil(int(quota) / int(period))) if quota not in ("-1", "max") else None
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _cpuset_cpus(version: int, cpuset_dir: Path | None) -> int | None:
    """CPUs of the group's cpuset; None without a (readable) cpuset, e.g. v2 without the cpuset controller."""
    if cpuset_dir is None:
        return None
    try:
        cpus = (cpuset_dir / ("cpuset.cpus" if version == 1 else "cpuset.cpus.effective")).read_text()
        return _cpu_list_size(cpus) or None
    except (OSError, ValueError):
        return None


def cgroup_cpu_limit(*, proc: Path = Path("/proc"), root: Path = Path("/")) -> int | None:
    """The CPUs this process's cgroup allows: its CPU quota rounded up, capped by its ``cpuset``; None where the
    group sets neither or its files cannot be read (no cgroup, or not mounted).

    Args:
        proc: the proc filesystem (``self/cgroup`` and ``self/mountinfo`` are read).
        root: the filesystem root the mount points of ``mountinfo`` are under.
    """
    try:
        version, cpu_dir, cpuset_dir = _cpu_dirs(proc, root)
    except (OSError, ValueError):
        return None  # no cgroup files: the affinity mask is the limit
    limits = [cpus for cpus in (_quota_cpus(version, cpu_dir), _cpuset_cpus(version, cpuset_dir)) if cpus]
    return min(limits, default=None)


def cpu_cores(*, proc: Path = Path("/proc"), root: Path = Path("/")) -> int:
    """The CPU cores this process may use, as Java counts them: its affinity mask capped by its cgroup's CPU
    quota and cpuset (``cgroup_cpu_limit``; its Args)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, cgroup_cpu_limit(proc=proc, root=root) or cores)


def configured_workers(model_config: Mapping[str, Any] | None) -> int | None:
    """The workers TorchServe 0.12 starts for a model-config.yaml: its ``minWorkers`` where the config names
    both counts with ``maxWorkers >= minWorkers > 0``, else None (TorchServe's default count, which
    ``worker_layout`` applies). As ``ModelConfig`` reads them, a non-integer count is left out, ``minWorkers``
    is at least 1 and a negative ``maxWorkers`` is left out.

    Args:
        model_config: the model's ``model-config.yaml`` (``context.model_yaml_config``); None when it has none.
    """
    def count(key: str) -> int | None:
        value = (model_config or {}).get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    low, high = count("minWorkers"), count("maxWorkers")
    low = max(1, low) if low is not None else 0
    high = high if high is not None and high >= 0 else 0
    return low if 0 < low <= high else None


def worker_layout(
    *, cores: int, gpus: int = 0, workers: int | None = None, torch_threads: int | None = None
) -> WorkerLayout:
    """The layout for a machine; explicit settings win over the rule.

    Args:
        cores: CPU cores available (``cpu_cores()``).
        gpus: GPUs the workers run on; 0 for CPU workers.
        workers: the workers TorchServe starts (``configured_workers``); None for its default (one per GPU,
            else per core).
        torch_threads: the handler's ``torch_threads`` setting; None for an equal share of the cores.
    """
    if cores < 1 or gpus < 0:
        raise ValueError(f"a machine needs at least one core and no negative GPU count, got {cores=}, {gpus=}")
    follows_load = not gpus and torch_threads is None and (workers or cores) > 1
    workers = workers or gpus or cores
    return WorkerLayout(
        workers=workers, torch_threads=torch_threads or max(1, cores // workers), cores=cores, gpus=gpus,
        follows_load=follows_load,
    )
