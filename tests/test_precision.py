"""How a CPU worker runs the model (handler/precision.py): bfloat16 where the CPU computes it, else ONNX Runtime,
else float32; coordinates in float32 either way, and the same tags as float32."""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest
import torch
from torchvision.ops import box_iou
from torchvision.transforms.functional import pil_to_tensor

from handler import precision
from handler.tagging import Tagger
from project import SHIPPED_CHECKPOINT
from training.demo import RECALL_SIZES, tag_recall
from training.synthetic import render_image

# Emulated bfloat16 (a CPU without it) took 34x float32's time on an AVX2 AMD EPYC: there the recall check runs
# 6 scenes of the first size so `make test` stays short; with native bfloat16, the float32 check's 30 of each.
RECALL_SCENES, RECALL_CHECKED = (30, RECALL_SIZES) if precision.native_bfloat16() else (6, RECALL_SIZES[:1])


def test_auto_takes_bfloat16_where_the_cpu_computes_it_else_onnx_runtime():
    for flags, installed, expected in [
            ({"avx2", "avx512f", "avx512_bf16"}, True, "bfloat16"), ({"avx2", "amx_bf16"}, False, "bfloat16"),
            ({"fp", "asimd", "bf16"}, True, "bfloat16"), ({"avx2", "avx512f", "avx512_vnni"}, True, "onnxruntime"),
            ({"avx2"}, False, "float32"), (set(), True, "onnxruntime")]:
        resolved = precision.resolve_cpu_runtime("auto", flags=frozenset(flags), onnxruntime=installed)
        assert resolved == expected, flags
        described = precision.describe_cpu_runtime("auto", flags=frozenset(flags), onnxruntime=installed)
        assert ("ONNX Runtime" in described.split(",")[0]) == (expected == "onnxruntime"), described
        assert ("not installed" in described) == (expected == "float32"), described
    # a model too big for one ONNX graph beside its PyTorch weights stays with PyTorch, unless asked for
    big = precision.ONNX_AUTO_MAX_PARAMETERS + 1
    assert precision.resolve_cpu_runtime("auto", flags=frozenset(), onnxruntime=True, parameters=big) == "float32"
    assert precision.resolve_cpu_runtime("onnxruntime", parameters=big) == "onnxruntime"
    for chosen in ("float32", "bfloat16", "onnxruntime"):
        assert precision.resolve_cpu_runtime(chosen, flags=frozenset(), onnxruntime=False) == chosen
        assert precision.describe_cpu_runtime(chosen).endswith(f", handler.cpu_runtime: {chosen}")
    with pytest.raises(ValueError, match="cpu_runtime must be one of auto, float32, bfloat16, onnxruntime, got 'f"):
        precision.resolve_cpu_runtime("float16")


def test_the_flags_are_the_ones_lscpu_reports(tmp_path):
    """Read from /proc/cpuinfo (x86 "flags", Arm "Features"); an unreadable file means no flags."""
    if shutil.which("lscpu") is None:
        pytest.skip("lscpu is not installed")
    listed = subprocess.run(["lscpu"], capture_output=True, text=True, env={"LC_ALL": "C"}, check=True).stdout
    (flags_line,) = [line for line in listed.splitlines() if line.startswith("Flags:")]
    assert precision.cpu_flags() == frozenset(flags_line.split(":", 1)[1].split())
    arm = tmp_path / "cpuinfo"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm bf16 i8mm\n")
    assert precision.native_bfloat16(precision.cpu_flags(arm))
    assert precision.cpu_flags(tmp_path / "absent") == frozenset()


def test_gpu_and_cpu_share_one_reduced_precision():
    assert precision.autocast_dtype("cuda", half_precision=True) is torch.float16
    assert precision.autocast_dtype("cuda", cpu_runtime="bfloat16") is None  # CPU setting: ignored on a GPU
    assert precision.autocast_dtype("cpu", half_precision=True) is None  # GPU setting: ignored on a CPU
    assert precision.autocast_dtype("cpu", cpu_runtime="bfloat16") is torch.bfloat16
    assert precision.autocast_dtype("cpu", cpu_runtime="onnxruntime") is None
    assert precision.autocast_dtype("cpu", cpu_runtime="auto") is (
        torch.bfloat16 if precision.native_bfloat16() else None)
    with precision.reduced_precision("cpu", torch.bfloat16):
        assert torch.get_autocast_dtype("cpu") is torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with precision.reduced_precision("cpu", None):
        assert not torch.is_autocast_enabled("cpu")


@pytest.fixture(scope="module")
def scenes() -> list[torch.Tensor]:
    rng = random.Random("precision")
    return [pil_to_tensor(render_image(rng, width=320, height=320)[0]) for _ in range(3)]


def test_bfloat16_finds_the_float32_detections_with_float32_coordinates(scenes):
    exact = Tagger.from_checkpoint(SHIPPED_CHECKPOINT, cpu_runtime="float32")
    reduced = Tagger.from_checkpoint(SHIPPED_CHECKPOINT, cpu_runtime="bfloat16")
    assert exact.autocast_dtype is None and reduced.autocast_dtype is torch.bfloat16
    with torch.inference_mode(), precision.reduced_precision("cpu", torch.bfloat16):
        (raw,) = reduced.model([scenes[0].float() / 255])
    assert raw["boxes"].dtype == raw["scores"].dtype == torch.float32  # detector.py's hooks, as on a GPU
    compared = 0
    for wanted, got in zip(exact.detect(scenes), reduced.detect(scenes)):
        confident = [d for d in wanted if d.score >= 0.5]
        assert confident and {d.label for d in confident} <= {d.label for d in got}
        for detection in confident:
            same = [d for d in got if d.label == detection.label]
            overlap = box_iou(torch.tensor([detection.box]), torch.tensor([d.box for d in same])).max()
            closest = min(same, key=lambda d: abs(d.score - detection.score))
            assert overlap > 0.9 and abs(closest.score - detection.score) < 0.05, (detection, same)
            compared += 1
    assert compared >= 3


def test_tag_recall_holds_in_bfloat16(scenes):
    """The demo model's recall check (tests/test_demo_model.py) under the worker's bfloat16: within 0.05 of
    float32's on the same scenes (every size where the CPU has bfloat16)."""
    model = Tagger.from_checkpoint(SHIPPED_CHECKPOINT).model
    for size in RECALL_CHECKED:
        with torch.inference_mode():
            exact = tag_recall(model, *size, scenes=RECALL_SCENES)
            with precision.reduced_precision("cpu", torch.bfloat16):
                reduced = tag_recall(model, *size, scenes=RECALL_SCENES)
        assert exact >= 0.8 and reduced >= exact - 0.05, (size, exact, reduced)
