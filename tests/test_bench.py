"""benchmarks/bench.py with tiny counts: the bare model, the plain baseline server and TorchServe in each fixed
layout (the part against `make serve`'s server runs in test_serving.py). The lead runs it in full on a quiet
machine."""

from __future__ import annotations

import subprocess
import sys

from handler.sizing import cpu_cores
from tests.conftest import ROOT


def test_bench_measures_the_bare_model_the_baseline_and_the_fixed_layouts(trained_checkpoint):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--parts", "bare,baseline,static", "--checkpoint", trained_checkpoint,
         "--images", "4", "--seconds", "1", "--clients", "1,2", "--batch-sizes", "1,2"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line[:58].strip(): list(map(float, line[58:].split())) for line in done.stdout.splitlines()
            if line.startswith(("bare model", "baseline", "TorchServe"))}
    cores = cpu_cores()
    layouts = [(p, cores // p) for p in range(1, cores + 1) if cores % p == 0]
    expected = {f"bare model, {p} process{'es' if p > 1 else ''} x {t} thread{'s' if t > 1 else ''}, batch {b}"
                for p, t in layouts for b in (1, 2)}
    baseline = sorted(name.rsplit(", ", 1)[1] for name in rows if name.startswith("baseline http.server, "))
    # TorchServe started with each layout fixed (the handler's torch_threads), on free ports.
    expected |= {f"TorchServe {p}x{t} fixed, {c}" for p, t in layouts for c in ("1 client", "2 clients")}
    assert set(rows) - expected == {name for name in rows if name.startswith("baseline")}, done.stdout
    assert expected <= set(rows) and baseline == ["1 client", "2 clients"], done.stdout
    for name, (images_per_second, p50, p90) in rows.items():
        assert images_per_second > 0 and 0 < p50 <= p90, name
    assert "best bare layout: bare model" in done.stdout
    assert "best fixed layout, 2 clients: TorchServe" in done.stdout
