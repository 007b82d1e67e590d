"""handler/neighbours.py: the cores other processes keep busy, measured from /proc, the workers' own time left out."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from handler.neighbours import WINDOW_S, NeighbourLoad
from handler.sizing import cpu_cores


@pytest.mark.skipif(not os.path.isfile("/proc/stat"), reason="no /proc (Linux only)")
def test_a_spinning_process_is_a_neighbour_unless_it_is_a_worker():
    cores = cpu_cores()
    if cores < 2 or len(os.sched_getaffinity(0)) != cores:
        pytest.skip("needs 2 or more cores and no cgroup quota below them")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        as_neighbour, as_worker = NeighbourLoad(cores=cores), NeighbourLoad(cores=cores)
        time.sleep(0.3)  # the spinner is up
        for load, workers in ((as_neighbour, [os.getpid()]), (as_worker, [os.getpid(), spinner.pid])):
            load.update(workers)
        time.sleep(1.0)
        for load, workers in ((as_neighbour, [os.getpid()]), (as_worker, [os.getpid(), spinner.pid])):
            load.update(workers)
        # Both read the same interval: they differ by the spinner's core (it may get less on a busy machine).
        assert 0.5 < as_neighbour.measured - as_worker.measured < 1.15, (as_neighbour.measured, as_worker.measured)
        assert as_neighbour.busy_cores >= 1
    finally:
        spinner.kill()
        spinner.wait()


@pytest.mark.skipif(not os.path.isfile("/proc/stat"), reason="no /proc (Linux only)")
def test_a_worker_always_keeps_a_core_and_a_reading_stands_for_its_window():
    cores = cpu_cores()
    if len(os.sched_getaffinity(0)) != cores:
        pytest.skip("a cgroup quota below the cores: not measured")
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        load = NeighbourLoad(cores=cores)
        time.sleep(0.3)
        load.update([os.getpid()])
        time.sleep(1.0)
        assert load.update([os.getpid()]) == cores - 1 and load.measured > cores - 0.5, load.measured
        for spinner in spinners:
            spinner.kill()
        assert load.update([os.getpid()]) == cores - 1  # within the window: the last reading stands
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def test_cores_narrower_than_the_affinity_mask_are_not_measured():
    # A CPU quota below the cores seen: /proc/stat counts the host's load, which is not the workers' to dodge.
    load = NeighbourLoad(cores=len(os.sched_getaffinity(0)) + 1)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        load.update([os.getpid()])
        time.sleep(0.5)
        assert load.update([os.getpid()]) == 0 and load.measured == 0
    finally:
        spinner.kill()
        spinner.wait()
