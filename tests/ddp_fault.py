"""The real training CLI with one injected fault, for the DDP failure tests (run under torchrun).

    DDP_FAULT=raise:1:2 torchrun --nproc_per_node 2 -m tests.ddp_fault --data ... (training.train's arguments)

``DDP_FAULT=KIND:RANK:STEP``: on process RANK, the STEP-th training forward pass (1-based) either raises a
RuntimeError (``raise``) or returns NaN losses (``nan``). Every other process trains normally.
"""

from __future__ import annotations

import os
import sys
import time

from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from training import train

KIND, RANK, STEP = os.environ["DDP_FAULT"].split(":")
training_forward = GeneralizedRCNN.forward
forward_calls = 0


def faulty_forward(self, images, targets=None):
    global forward_calls
    if self.training:
        forward_calls += 1
        if int(os.environ["RANK"]) == int(RANK) and forward_calls == int(STEP):
            # When the fault fired, for measuring how long the other processes take to stop.
            print(f"injecting {KIND} at {time.time():.3f}", file=sys.stderr, flush=True)
            if KIND == "raise":
                raise RuntimeError(f"injected fault on rank {RANK} at step {STEP}")
            return {name: loss * float("nan") for name, loss in training_forward(self, images, targets).items()}
    return training_forward(self, images, targets)


GeneralizedRCNN.forward = faulty_forward

if __name__ == "__main__":
    sys.exit(train.main())
