"""benchmarks/gpu_serve.py: its CPU path end to end against the real TorchServe (what a lent GPU runs in full),
and its reading of the batches' metric lines."""

from __future__ import annotations

import json

from benchmarks.gpu_serve import batch_profile, logged_batches
from tests.conftest import run_module


def test_cpu_run_serves_each_archive_and_profiles_its_batches(tmp_path):
    report = tmp_path / "gpu_serve.json"
    result = run_module("benchmarks.gpu_serve", "--device", "cpu", "--models", "demo", "--precisions",
                        "float32,float16", "--batch-sizes", "4", "--clients", "1", "--seconds", "2",
                        "--image-size", "320x240", "--output", report)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    measured = json.loads(report.read_text())

    assert measured["device"] == "cpu" and measured["image_size"] == [320, 240] and measured["tests"] is None
    assert "float16: skipped, GPU only" in result.stdout and "GPU tests: skipped on a CPU" in result.stdout
    (bare,) = measured["bare"]
    assert (bare["model"], bare["precision"], bare["batch_size"]) == ("demo", "float32", 4)
    assert bare["images_per_second"] > 0
    (row,) = measured["served"]
    assert (row["model"], row["precision"], row["batch_size"], row["clients"]) == ("demo", "float32", 4, 1)
    assert row["images_per_second"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    assert row["bare_images_per_second"] == bare["images_per_second"]
    profile = row["profile"]
    assert profile["batches"] >= 2 and profile["images_per_batch"] == 1  # one client: one request at a time
    stages = profile["preprocess_ms"] + profile["inference_ms"] + profile["postprocess_ms"]
    assert 0 < profile["inference_ms"] < stages <= profile["handler_ms"] <= profile["prediction_ms"]
    assert row["front_end_ms"] == row["latency_ms"] - profile["handler_ms"] > 0
    assert "demo     float32        4       1" in result.stdout  # the table's row


def metric_lines(model: str, ids: str, images: int, handler_ms: float) -> list[str]:
    """A batch's metric lines as ts_log.log holds them (scripts/serve.py's log4j2.xml)."""
    values = {"TaggerPreprocessTime.Milliseconds": 1.0, "TaggerInferenceTime.Milliseconds": handler_ms - 2,
              "TaggerImages.Count": images, "TaggerPostprocessTime.Milliseconds": 1.0,
              "HandlerTime.Milliseconds": handler_ms, "PredictionTime.Milliseconds": handler_ms + 0.5}
    return [f"2026-12-07T15:42:43,110 [INFO ] W-9001-{model}_1.0-stdout org.pytorch.serve.wlm.WorkerLifeCycle - "
            f"result=[METRICS]{name}:{value}|#ModelName:{model},Level:Model|#type:GAUGE|#hostname:vm,1796658163,"
            f"{ids}, pattern=[METRICS]\n" for name, value in values.items()]


def test_batches_are_read_by_model_and_weighted_by_their_images(tmp_path):
    log = tmp_path / "ts_log.log"
    one, three = metric_lines("demo_b4_float32", "a", 1, 10.0), metric_lines("demo_b4_float32", "b,c,d", 3, 30.0)
    other = metric_lines("demo_b8_float32", "e", 1, 99.0)
    # Two workers' batches interleave, another model's batch is left out, and the last line is still being written.
    log.write_text("".join(one[:3] + three[:2] + other + one[3:] + three[2:]) + "2026-12-07 result=[METRICS]Tagg")
    batches, offset = logged_batches(log, 0, model="demo_b4_float32", images=4, timeout=1)
    assert sorted(batch["TaggerImages"] for batch in batches) == [1, 3]
    assert offset == log.read_bytes().rfind(b"\n") + 1
    profile = batch_profile(batches)
    assert (profile.batches, profile.images_per_batch) == (2, 2.0)
    assert profile.handler_ms == (10.0 * 1 + 30.0 * 3) / 4 and profile.prediction_ms == profile.handler_ms + 0.5
