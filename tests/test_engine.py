"""The training step, mAP scoring, batching and augmentation helpers of the training flow."""

import math
import random
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing
import pytest
from torch.utils.data import DataLoader, SequentialSampler
from torchvision.transforms.functional import pil_to_tensor

from handler.detector import build_detector_from_config
from training.augmentation import RandomHorizontalFlip
from training.batching import GroupedBatchSampler, aspect_ratio_groups, collate_as_lists
from training.datasets import DatasetWarning, UnreadableImage
from training.distributed import Agreement, StepState, agree, reduce_dict
from training.engine import coco_map, format_metrics_table, train_one_epoch
from training.presets import model_config
from training.synthetic import render_image

NAMES = ["cat", "dog", "owl"]


def target(boxes, labels, difficult=None):
    difficult = difficult or [False] * len(labels)
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
            "difficult": torch.tensor(difficult)}


def prediction(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels),
            "scores": torch.tensor(scores)}


def test_perfect_detections_score_one_and_absent_classes_are_not_averaged():
    targets = [target([[10, 10, 60, 60], [100, 100, 180, 150]], [1, 2])]
    predictions = [prediction([[10, 10, 60, 60], [100, 100, 180, 150]], [1, 2], [0.9, 0.8])]
    metrics = coco_map(targets, predictions, NAMES)
    assert metrics["map50"] == pytest.approx(1.0)
    assert metrics["map"] == pytest.approx(1.0)
    assert metrics["per_class"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0), "owl": None}


def test_wrong_labels_and_loose_boxes_score_less():
    targets = [target([[10, 10, 60, 60], [100, 100, 180, 150]], [1, 2])]
    # the cat box is right but called a dog; the dog box overlaps its object with IoU 0.6
    predictions = [prediction([[10, 10, 60, 60], [100, 100, 180, 130]], [2, 2], [0.9, 0.8])]
    metrics = coco_map(targets, predictions, NAMES)
    assert metrics["per_class"]["cat"] == 0.0
    assert 0.0 < metrics["per_class"]["dog"] < 1.0  # a false positive ranked above the true one
    assert metrics["map"] < metrics["map50"] < 1.0


def test_difficult_objects_neither_count_as_missed_nor_as_false_positives():
    targets = [target([[10, 10, 60, 60], [100, 100, 180, 150]], [1, 1], difficult=[False, True])]
    found_both = coco_map(targets, [prediction([[10, 10, 60, 60], [100, 100, 180, 150]], [1, 1], [0.9, 0.95])],
                          NAMES)
    found_easy_only = coco_map(targets, [prediction([[10, 10, 60, 60]], [1], [0.9])], NAMES)
    assert found_both["per_class"]["cat"] == pytest.approx(1.0)
    assert found_easy_only["per_class"]["cat"] == pytest.approx(1.0)


def test_no_detections_at_all_scores_zero():
    metrics = coco_map([target([[10, 10, 60, 60]], [3])], [prediction([], [], [])], NAMES)
    assert metrics == {"map50": 0.0, "map": 0.0, "per_class": {"cat": None, "dog": None, "owl": 0.0}}
    table = format_metrics_table(metrics)
    assert "owl" in table and "n/a (no objects)" in table and "mAP@0.5" in table


def test_grouped_batches_keep_orientations_apart_and_cover_every_index():
    sizes = [(400, 300), (300, 400), (500, 300), (300, 500), (600, 400), (640, 480), (200, 400)]
    groups = aspect_ratio_groups(sizes)
    assert groups == [0, 1, 0, 1, 0, 0, 1]
    sampler = GroupedBatchSampler(SequentialSampler(sizes), groups, batch_size=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4
    assert sorted(i for batch in batches for i in batch) == list(range(7))
    full = [batch for batch in batches if len(batch) == 2]
    assert all(groups[a] == groups[b] for a, b in full[:3])


def test_horizontal_flip_mirrors_boxes_with_the_image():
    image = torch.zeros(3, 10, 20)
    image[:, :, :5] = 1.0  # the left quarter is bright
    boxes = torch.tensor([[0.0, 2.0, 5.0, 8.0]])
    flipped, flipped_target = RandomHorizontalFlip(p=1.0)(image, {"boxes": boxes, "labels": torch.tensor([1])})
    assert flipped[:, :, 15:].min() == 1.0 and flipped[:, :, :15].max() == 0.0
    assert flipped_target["boxes"].tolist() == [[15.0, 2.0, 20.0, 8.0]]
    assert boxes.tolist() == [[0.0, 2.0, 5.0, 8.0]]  # the caller's target is left alone
    same, same_target = RandomHorizontalFlip(p=0.0)(image, {"boxes": boxes})
    assert same is image and same_target["boxes"] is boxes


def test_batches_are_lists_of_differently_sized_images_without_the_unreadable_ones():
    broken = UnreadableImage(path=Path("broken.jpg"), reason="truncated")
    batch = collate_as_lists([(torch.zeros(3, 10, 20), {"id": 1}), broken, (torch.zeros(3, 30, 5), {"id": 2})])
    assert [tuple(i.shape) for i in batch.images] == [(3, 10, 20), (3, 30, 5)]
    assert batch.targets == [{"id": 1}, {"id": 2}]
    assert batch.unreadable == [broken] and str(broken) == "broken.jpg (truncated)"


def test_an_epoch_trains_on_the_readable_images_and_names_the_others():
    """One image per batch: a batch with only an unreadable image is skipped, not a crash."""
    samples = []
    for seed in range(3):
        picture, objects = render_image(random.Random(seed), width=96, height=96)
        samples.append((pil_to_tensor(picture).float() / 255,
                        {"boxes": torch.tensor([box for _, box in objects], dtype=torch.float32),
                         "labels": torch.tensor([label + 1 for label, _ in objects])}))
    samples.insert(1, UnreadableImage(path=Path("broken.jpg"), reason="truncated"))
    torch.manual_seed(0)
    model = build_detector_from_config(model_config("demo", 23, min_size=96, max_size=96))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001)
    loader = DataLoader(samples, batch_size=1, collate_fn=collate_as_lists)
    with pytest.warns(DatasetWarning, match=r"skipped unreadable image broken.jpg \(truncated\) \(1 this epoch\)"):
        result = train_one_epoch(model, optimizer, loader, torch.device("cpu"), 1, show_progress=False)
    assert result.steps == 3
    assert result.unreadable_images == ["broken.jpg (truncated)"]
    assert set(result.losses) == {"loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert result.losses["loss"] == pytest.approx(sum(v for k, v in result.losses.items() if k != "loss"))


def agree_as_rank(rank: int, store: str, results) -> None:
    """One of two gloo processes; rank 1 has an empty batch, then fails, then has a NaN loss."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    empty = agree(StepState.EMPTY if rank == 1 else StepState.READY)
    failed = agree(StepState.FAILED, "ValueError: bad box") if rank == 1 else agree(StepState.READY)
    losses = reduce_dict({"loss": torch.tensor(float("nan") if rank == 1 else 1.0), "other": torch.tensor(2.0 * rank)})
    results.put((rank, empty, failed, math.isnan(losses["loss"]), losses["other"].item()))
    dist.destroy_process_group()


def test_two_processes_agree_on_each_step_and_average_losses_before_the_nan_check(tmp_path):
    """What one process reports, every process gets back: both skip, both stop, both see the NaN."""
    context = torch.multiprocessing.get_context("fork")
    results = context.SimpleQueue()
    torch.multiprocessing.start_processes(agree_as_rank, args=(str(tmp_path / "store"), results), nprocs=2,
                                          start_method="fork")
    outcomes = sorted(results.get() for _ in range(2))
    for rank, empty, failed, loss_is_nan, other in outcomes:
        assert empty == Agreement(StepState.EMPTY)
        assert failed == Agreement(StepState.FAILED, failed_rank=1, message="ValueError: bad box")
        assert loss_is_nan and other == pytest.approx(1.0)
    assert [outcome[0] for outcome in outcomes] == [0, 1]
