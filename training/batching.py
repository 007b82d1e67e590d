"""How training and evaluation batch their images: lists of different sizes, landscape and portrait apart."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from training.datasets import UnreadableImage


@dataclass
class Batch:
    """A training or evaluation batch: images of different sizes as a list, and the images left out."""

    images: list[torch.Tensor]
    targets: list[dict]
    unreadable: list[UnreadableImage]


def collate_as_lists(samples: Sequence[tuple[torch.Tensor, dict] | UnreadableImage]) -> Batch:
    """Keeps images of different sizes apart (detection models take a list, never a stacked tensor) and
    sets aside the images that failed to decode, so the batch trains on the others."""
    readable = [sample for sample in samples if not isinstance(sample, UnreadableImage)]
    return Batch(images=[image for image, _ in readable], targets=[target for _, target in readable],
                 unreadable=[sample for sample in samples if isinstance(sample, UnreadableImage)])


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
