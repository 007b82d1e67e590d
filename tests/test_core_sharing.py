"""Torch threads that follow the load (handler/core_sharing.py): the busy record between worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from handler.core_sharing import CoreSharing, busy_threads, record_folder
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
    assert not list(folder.iterdir())


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


def test_a_full_batch_takes_its_share_even_when_the_others_are_idle(tmp_path, threads_kept):
    worker = CoreSharing(folder=tmp_path / "record", cores=4, workers=2)
    try:
        with worker.busy(backlog=True) as threads:
            assert threads == 2 and worker.share_now() == 2
        with worker.busy() as threads:
            assert threads == 4
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
        survivor.close()
        # The dead worker's file is swept by the next worker that takes its place.
        assert list(folder.glob(f"{dying.pid}.*"))
        CoreSharing(folder=folder, cores=2, workers=2).close()
        assert not list(folder.glob(f"{dying.pid}.*"))
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
