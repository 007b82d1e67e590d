"""Batching and multi-process helpers for training (torchrun / DDP)."""

from __future__ import annotations

import os
import random
from collections import defaultdict
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def collate_as_lists(batch: Sequence[tuple]) -> tuple[list, list]:
    """Keeps images of different sizes apart: detection models take a list, never a stacked tensor."""
    images, targets = zip(*batch)
    return list(images), list(targets)


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches indices that share a group (e.g. landscape vs portrait), so padding wastes little.

    Args:
        sampler: yields the indices of this process (a RandomSampler or DistributedSampler).
        group_ids: group of every index of the data set.
        batch_size: images per batch; leftovers of the groups are batched together at the end.
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int) -> None:
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        buckets: dict[int, list[int]] = defaultdict(list)
        for index in self.sampler:
            bucket = buckets[self.group_ids[index]]
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket.copy()
                bucket.clear()
        leftovers = [i for bucket in buckets.values() for i in bucket]
        for start in range(0, len(leftovers), self.batch_size):
            yield leftovers[start:start + self.batch_size]

    def __len__(self) -> int:
        # An upper bound is not allowed here: count exactly what __iter__ yields for this sampler's indices.
        counts: dict[int, int] = defaultdict(int)
        for index in self.sampler:
            counts[self.group_ids[index]] += 1
        full = sum(n // self.batch_size for n in counts.values())
        leftovers = sum(n % self.batch_size for n in counts.values())
        return full + -(-leftovers // self.batch_size)


def aspect_ratio_groups(sizes: Sequence[tuple[int, int]]) -> list[int]:
    """0 for landscape or square images, 1 for portrait ones."""
    return [0 if width >= height else 1 for width, height in sizes]


def init_distributed() -> tuple[int, int, int]:
    """Joins the torchrun process group when torchrun started us; returns (rank, world size, local rank)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return rank, world, local


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Averages scalar values over all processes (identity without DDP)."""
    if not dist.is_initialized():
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return {k: v / dist.get_world_size() for k, v in zip(keys, tensor.tolist())}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
