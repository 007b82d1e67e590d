"""benchmarks/gpu_check.py: its CPU run end to end (what a lent GPU runs in full), and its agreement rule."""

from __future__ import annotations

import json
import math

from benchmarks.gpu_check import (BACKBONE_NAMES, BOX_TOLERANCE_PX, SCORE_THRESHOLD, SCORE_TOLERANCE, compare)
from handler.tagging import Detection
from tests.conftest import run_module

LOSS_NAMES = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}


def test_quick_cpu_run_checks_detections_throughput_and_training(tmp_path):
    report = tmp_path / "gpu_check.json"
    result = run_module("benchmarks.gpu_check", "--device", "cpu", "--quick", "--json", report)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    measured = json.loads(report.read_text())

    assert measured["device"].startswith("CPU") and measured["quick"] is True
    variants = [row["variant"] for row in measured["detections"]]
    assert variants == ["cpu float32", "cpu float16", "cpu float16 + channels_last"]
    for row in measured["detections"]:
        assert row["agrees"] and row["reference"] > 0 and row["matched"] == row["reference"] == row["found"]
    rates = {(row["backbone"], row["batch_size"]): row["images_per_second"] for row in measured["throughput"]}
    assert set(rates) == {(backbone, batch) for backbone in BACKBONE_NAMES for batch in (1, 2)}
    assert all(rate > 0 for rate in rates.values())
    assert [(row["backbone"], row["memory_format"]) for row in measured["training"]] == [
        (backbone, "contiguous") for backbone in BACKBONE_NAMES]
    for row in measured["training"]:
        assert row["finite"] and set(row["losses"]) == LOSS_NAMES and row["seconds"] > 0
        assert all(math.isfinite(loss) for loss in row["losses"].values())

    table = result.stdout
    assert "detections of the demo model against the CPU's float32" in table
    assert table.count("  agree") == 3 and "DISAGREE" not in table
    for backbone in BACKBONE_NAMES:
        assert f"{backbone:<10}float32" in table and f"{backbone:<10}contiguous" in table


def detection(label: str, score: float, box: tuple[float, float, float, float]) -> Detection:
    return Detection(label=label, score=score, box=box)


def test_agreement_allows_the_stated_tolerances_only():
    cat = detection("cat", 0.9, (10.0, 20.0, 110.0, 220.0))
    dog = detection("dog", 0.7, (50.0, 50.0, 90.0, 90.0))
    near = [detection("cat", 0.9 - SCORE_TOLERANCE / 2, (10.0 + BOX_TOLERANCE_PX, 20.0, 110.0, 220.0)),
            detection("dog", 0.7, (50.0, 50.0, 90.0, 90.0 - BOX_TOLERANCE_PX))]
    agreement = compare("close", [[cat, dog]], [near])
    assert agreement.agrees and agreement.matched == 2
    assert agreement.max_box_diff_px == BOX_TOLERANCE_PX

    moved = [detection("cat", 0.9, (10.0 + BOX_TOLERANCE_PX + 0.5, 20.0, 110.0, 220.0)), dog]
    moved_apart = compare("moved", [[cat, dog]], [moved])
    assert moved_apart.unmatched == 2  # the CPU's cat unpaired, and the moved one
    assert moved_apart.unmatched_detections == (
        "image 0: cpu float32 cat 0.900 at (10.0, 20.0, 110.0, 220.0); nearest on the other side: 0.900 at "
        "(12.5, 20.0, 110.0, 220.0) (box diff 2.5 px)",
        "image 0: moved cat 0.900 at (12.5, 20.0, 110.0, 220.0); nearest on the other side: 0.900 at "
        "(10.0, 20.0, 110.0, 220.0) (box diff 2.5 px)")
    relabelled = [detection("bird", 0.9, cat.box), dog]
    assert not compare("relabelled", [[cat, dog]], [relabelled]).agrees
    rescored = [detection("cat", 0.9 - 2 * SCORE_TOLERANCE, cat.box), dog]
    assert not compare("rescored", [[cat, dog]], [rescored]).agrees
    missing = compare("missing", [[cat, dog]], [[cat]])
    assert missing.unmatched_detections == (
        "image 0: cpu float32 dog 0.700 at (50.0, 50.0, 90.0, 90.0); no detection of that label on the other side",)
    assert compare("extra", [[cat]], [[cat, dog]]).unmatched == 1


def test_a_detection_at_the_threshold_may_fall_just_under_it():
    borderline = detection("cat", SCORE_THRESHOLD + SCORE_TOLERANCE / 2, (10.0, 10.0, 50.0, 50.0))
    under = detection("cat", SCORE_THRESHOLD - SCORE_TOLERANCE / 4, borderline.box)
    assert compare("borderline", [[borderline]], [[under]]).agrees
    assert compare("borderline", [[borderline]], [[]]).agrees
    assert compare("borderline", [[]], [[borderline]]).agrees
