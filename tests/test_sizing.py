"""handler/sizing.py: workers and torch threads per worker from the machine; explicit settings win."""

from __future__ import annotations

import os

import pytest

from handler.sizing import WorkerLayout, cpu_cores, worker_layout


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
    assert worker_layout(cores=16, workers=4) == WorkerLayout(workers=4, torch_threads=4, cores=16, gpus=0)
    assert worker_layout(cores=2, workers=1) == WorkerLayout(workers=1, torch_threads=2, cores=2, gpus=0)
    assert worker_layout(cores=16, workers=4, torch_threads=1).torch_threads == 1
    assert worker_layout(cores=2, gpus=1, workers=3).workers == 3


def test_describe_names_the_layout():
    assert worker_layout(cores=2).describe() == "2 workers x 1 torch thread (2 CPU cores)"
    assert worker_layout(cores=16, gpus=1).describe() == "1 worker x 16 torch threads (16 CPU cores, 1 GPU)"


def test_a_machine_without_cores_is_refused():
    with pytest.raises(ValueError, match="at least one core"):
        worker_layout(cores=0)


def test_cpu_cores_counts_the_cores_this_process_may_use():
    assert 1 <= cpu_cores() <= len(os.sched_getaffinity(0))
