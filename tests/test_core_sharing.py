"""Torch threads that follow the load (handler/core_sharing.py): the busy record between worker processes."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

from handler.core_sharing import RECORD_PREFIX, CoreSharing, busy_threads, record_folder, sweep_stale_records
from handler.sizing import cpu_cores
from project import ROOT
from tests.test_handler import Upload, ask, eager_checkpoint, serve  # noqa: F401 (fixture)
from tests.test_serving import scene



@pytest.fixture
def threads_kept():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_lone_batch_takes_every_core_and_busy_workers_share_them(tmp_path, threads_kept):
    folder = tmp_path / "record"
    workers = [CoreSharing(folder=folder, cores=4, workers=3) for _ in range(3)]
    try:
        with workers[0].busy() as alone:
            assert alone == torch.get_num_threads() == 4
            with workers[1].busy() as second:
                assert second == 2  # two busy workers share the four cores
                with workers[2].busy() as third:
                    assert third == 1  # 4 // 3, and never below one thread
                    assert sorted(busy_threads(folder)) == [1, 2, 4]
        assert busy_threads(folder) == []
        with workers[2].busy() as later:  # the others are idle again
            assert later == 4
    finally:
        for worker in workers:
            worker.close()
    assert not folder.exists()  # the last worker to leave takes the folder with it


def test_a_worker_that_began_alone_gives_cores_back_at_its_next_model_call(tmp_path, threads_kept):
    first, second = (CoreSharing(folder=tmp_path / "record", cores=2, workers=2) for _ in range(2))
    try:
        with first.busy() as alone:
            assert alone == 2
            with second.busy() as shared:
                assert shared == 1
                assert first.share_now() == 1 and sorted(busy_threads(first.folder)) == [1, 1]
            assert first.share_now() == 2  # the other one is done: every core again
    finally:
        first.close()
        second.close()


def test_a_full_batch_takes_its_share_of_the_workers_alive_even_when_they_are_idle(tmp_path, threads_kept):
    worker = CoreSharing(folder=tmp_path / "record", cores=4, workers=4)
    other = CoreSharing(folder=tmp_path / "record", cores=4, workers=4)
    try:
        with worker.busy(backlog=True) as threads:
            assert threads == 2 and worker.share_now() == 2  # two workers alive, the other one idle
        with worker.busy() as threads:
            assert threads == 4
    finally:
        other.close()
    try:
        with worker.busy(backlog=True) as threads:
            assert threads == 4 and worker.workers == 1  # alone in the record
    finally:
        worker.close()


def test_the_workers_are_counted_not_guessed(tmp_path, threads_kept):
    """TorchServe starts one CPU worker on a 16-core host with one GPU and `deviceType: cpu` (its default count
    is one per GPU, whatever the device type), while the handler's rule guesses one per core: the record's
    count wins, so the lone worker takes every core under load, not 16 // 16."""
    worker = CoreSharing(folder=tmp_path / "record", cores=16, workers=16)
    try:
        with worker.busy(backlog=True) as threads:
            assert threads == 16
    finally:
        worker.close()


def test_a_worker_that_dies_mid_batch_gives_its_cores_back(tmp_path, threads_kept):
    folder = tmp_path / "record"
    # A worker process that takes its place, starts a batch and is killed in it (as TorchServe kills a
    # worker past responseTimeout): nothing of it runs to release the claim.
    dying = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from handler.core_sharing import CoreSharing
        sharing = CoreSharing(folder=Path({str(folder)!r}), cores=2, workers=2)
        with sharing.busy():
            print("busy", flush=True)
            time.sleep(600)
    """)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert dying.stdout.readline().strip() == "busy"
        survivor = CoreSharing(folder=folder, cores=2, workers=2)
        with survivor.busy() as threads:
            assert threads == 1 and sorted(busy_threads(folder)) == [1, 2]
        os.kill(dying.pid, signal.SIGKILL)
        dying.wait(timeout=10)
        with survivor.busy() as threads:
            assert threads == 2
        with survivor.busy(backlog=True) as threads:
            assert threads == 2  # the dead worker is not counted among those alive
        # The dead worker's files are swept by the next worker that takes its place.
        assert list(folder.glob(f"{dying.pid}.*"))
        CoreSharing(folder=folder, cores=2, workers=2).close()
        assert not list(folder.glob(f"{dying.pid}.*"))
        survivor.close()
    finally:
        dying.kill()
        dying.wait()


def test_the_handler_sizes_each_batch_by_the_busy_workers(eager_checkpoint, tmp_path, threads_kept):
    cores = cpu_cores()
    if cores < 2:
        pytest.skip("one core: a single worker takes it, nothing to share")
    service = serve(eager_checkpoint, tmp_path / "model")
    handler = service._entry_point.__self__
    # No worker count in the model config: one worker per core, each starting with its share.
    assert handler.core_sharing is not None and handler.core_sharing.folder == record_folder(os.getppid())
    assert handler.core_sharing.folder.parent == Path(tempfile.gettempdir()) != Path("/tmp")  # conftest's
    assert torch.get_num_threads() == 1
    image, _ = scene(7200)
    other = CoreSharing(folder=handler.core_sharing.folder, cores=cores, workers=cores)
    try:
        with other.busy():  # another worker is busy: this one keeps its share
            ask(service, [Upload([("data", "image/jpeg", image)])])
            assert torch.get_num_threads() == cores // 2
        ask(service, [Upload([("data", "image/jpeg", image)])])  # alone: every core
        assert torch.get_num_threads() == cores
        ask(service, [Upload([("data", "image/jpeg", image)])] * 8)  # a full batch (8): the share
        assert torch.get_num_threads() == 1
    finally:
        other.close()
        handler.core_sharing.close()


def test_a_record_removed_mid_batch_costs_one_equal_share_and_is_made_again(tmp_path, threads_kept, caplog):
    """A tmp cleaner (systemd-tmpfiles) or `rm -rf /tmp/tagger-*` while the server runs: the batch in flight
    takes the equal share, the next one re-creates the record, and the fault is logged once."""
    folder = tmp_path / "record"
    first, second = (CoreSharing(folder=folder, cores=4, workers=2) for _ in range(2))
    try:
        with first.busy() as threads:
            assert threads == 4
            shutil.rmtree(folder)
            for _ in range(3):
                assert first.share_now() == 2  # no record: the equal share among the 2 workers last counted
        with second.busy() as threads:  # joins again: the folder and its files are made anew
            assert threads == 4 and folder.is_dir()
            with first.busy() as shared:  # and the two see each other again
                assert shared == 2 and second.share_now() == 2 and sorted(busy_threads(folder)) == [2, 2]
        faults = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
        assert len(faults) == 1 and "FileNotFoundError" in faults[0], faults
    finally:
        first.close()
        second.close()


def test_a_replaced_file_is_read_by_its_inode(tmp_path, threads_kept):
    """A worker's files removed and made again under the same name (the folder swept while it was idle): the
    others must read the new files, not the descriptors they kept of the old ones."""
    folder = tmp_path / "record"
    watcher, worker = (CoreSharing(folder=folder, cores=2, workers=2) for _ in range(2))
    try:
        with watcher.busy():
            pass  # the watcher now keeps descriptors of the worker's files
        shutil.rmtree(folder)
        with worker.busy():  # re-joins: same names, new files
            with watcher.busy() as threads:
                assert threads == 1
    finally:
        watcher.close()
        worker.close()


@pytest.mark.parametrize("blocker", ["a file", "a symlink to a folder", "an unwritable parent"])
def test_an_unusable_record_gives_the_equal_share_and_never_fails_the_worker(tmp_path, threads_kept, blocker,
                                                                              caplog):
    folder = tmp_path / "parent" / "record"
    folder.parent.mkdir()
    if blocker == "a file":
        folder.write_text("left by someone else")
    elif blocker == "a symlink to a folder":
        (tmp_path / "elsewhere").mkdir()
        folder.symlink_to(tmp_path / "elsewhere")
    else:
        folder.parent.chmod(0o500)
    if blocker == "an unwritable parent" and os.geteuid() == 0:
        pytest.skip("root writes into any folder")
    worker = CoreSharing(folder=folder, cores=4, workers=2)
    try:
        for _ in range(2):
            with worker.busy() as threads:
                assert threads == 2
        assert len([r for r in caplog.records if "cannot be used" in r.getMessage()]) == 1
    finally:
        worker.close()
        folder.parent.chmod(0o700)


def _hold_a_place(tmp_dir: Path, *, own_pid_namespace: bool = False) -> subprocess.Popen:
    """A worker process that joins the record of its parent (its front end) in ``tmp_dir``, prints the record's
    folder and waits; with ``own_pid_namespace`` its parent is pid 1 of a pid namespace of its own, as the
    front end of a container is."""
    code = textwrap.dedent("""
        import os, time
        from handler.core_sharing import CoreSharing, record_folder
        sharing = CoreSharing(folder=record_folder(os.getppid()), cores=2, workers=2)
        print(sharing.folder, flush=True)
        time.sleep(600)
    """)
    # The shell stays the worker's parent ("; true" keeps it from exec-ing the worker in its place).
    command = ["sh", "-c", f"{shlex.join([sys.executable, '-c', code])}; true"]
    if own_pid_namespace:  # --kill-child: the namespace, worker included, ends with the unshare process
        command = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *command]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmp_dir)}, start_new_session=True)


def _end(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def test_front_ends_in_containers_sharing_tmp_never_share_a_record(tmp_path):
    """Two containers mounting the same /tmp each run their front end as pid 1: the pid alone named one
    folder for both, each counted the other's workers, and one's start-up sweep deleted the other's files."""
    if subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode:
        pytest.skip("unshare cannot make a pid namespace here (needs root)")
    shared_tmp = tmp_path / "parent"
    shared_tmp.mkdir()
    containers = [_hold_a_place(shared_tmp, own_pid_namespace=True) for _ in range(2)]
    try:
        folders = [Path(container.stdout.readline().strip()) for container in containers]
        assert folders[0] != folders[1] and all(f.parent == shared_tmp for f in folders), folders
        assert all(f.name.startswith(RECORD_PREFIX) and "-1-" in f.name for f in folders)  # pid 1 in both
        for folder in folders:  # each worker's files outlived the other's start-up sweep
            assert len(list(folder.glob("*.alive"))) == 1
        assert sweep_stale_records(shared_tmp) == []  # live workers' records are kept
        _end(containers[0])
        # The killed worker's locks go when its process is gone, a moment after its namespace's first process.
        deadline = time.monotonic() + 30
        while (swept := sweep_stale_records(shared_tmp)) == [] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert swept == [folders[0]]  # the stopped one's goes
        assert folders[1].is_dir()
    finally:
        for container in containers:
            _end(container)


def test_a_stopped_servers_record_is_swept_and_a_later_front_end_with_its_pid_gets_another(tmp_path):
    left = tmp_path / f"{RECORD_PREFIX}12345"  # as the earlier version of this module left them, one per start
    left.mkdir()
    (left / "777.0").write_text("1")
    worker = CoreSharing(folder=record_folder(os.getpid(), tmp_dir=tmp_path), cores=2, workers=2)
    try:
        assert not left.exists()
        assert worker.folder.name.startswith(f"{RECORD_PREFIX}{os.stat('/proc/self/ns/pid').st_ino}-{os.getpid()}-")
        later = subprocess.run([sys.executable, "-c", "import os; from handler.core_sharing import front_end_key; "
                                "print(front_end_key(os.getpid()))"], cwd=ROOT, capture_output=True, text=True)
        assert later.stdout.strip() != worker.folder.name.removeprefix(RECORD_PREFIX)  # the start time differs
    finally:
        worker.close()
    assert not worker.folder.exists()


def test_batch_size_one_keeps_threads_following_the_load(eager_checkpoint, tmp_path, threads_kept):
    """With batchSize 1 every batch is full: it was taken for a backlog, and a lone request got one thread."""
    cores = cpu_cores()
    if cores < 2:
        pytest.skip("one core: a single worker takes it, nothing to share")
    service = serve(eager_checkpoint, tmp_path / "model", batch_size=1)
    handler = service._entry_point.__self__
    try:
        ask(service, [Upload([("data", "image/jpeg", scene(7300)[0])])])
        assert torch.get_num_threads() == cores
    finally:
        handler.core_sharing.close()
