"""Ranks and collectives of a torchrun (DDP) training, and the protocol that makes its processes fail together.

How the processes of a DDP run fail together: the forward pass of every training step sits between two calls of
``agree`` (``training.engine.train_one_epoch``), one small all_reduce in which each process says whether it is
ready, has nothing to train on, has run out of batches or has failed (its loader or its forward pass raised).
All of them then take the same path: they train the step, skip it, end the epoch, or raise the same
``StepFailedError`` (the failed process's message, broadcast), so none is left waiting in a collective. Losses
are averaged across processes (``reduce_dict``) before the non-finite check, so a NaN on one process stops them
all at the same step. A failure outside a step (a crash, a kill, an error while rank 0 writes a checkpoint) ends
that process with an error; torchrun (``--max-restarts 0``, its default) then stops the others within its
monitor interval (0.1 s). Evaluation is shared: each process predicts its own part of the validation set and
rank 0 scores all of it (``gather_to_main``), so no process waits for a whole evaluation and the default
process-group timeout (30 min gloo, 10 min nccl) is never what ends a run. Per step that is three tiny
collectives (two ``agree``, one ``reduce_dict``) next to DDP's own.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


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


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class StepState(enum.IntEnum):
    """What a process reports to ``agree``; the largest value over all processes decides for all."""

    READY = 0
    EMPTY = 1  # every image of its batch was unreadable: all processes skip the step
    DONE = 2  # its loader has no batch left: all processes end the epoch
    FAILED = 3  # its loader or its forward pass raised: all processes stop


@dataclass(frozen=True)
class Agreement:
    """The outcome of ``agree``, the same on every process."""

    state: StepState
    failed_rank: int | None = None
    message: str | None = None  # the failed process's one-line description of its error


class StepFailedError(RuntimeError):
    """A process failed in a training step; every process raises this with the same message and stops."""


def agree(state: StepState, message: str | None = None) -> Agreement:
    """Every process's state in one all_reduce; a failed process's ``message`` is broadcast to all.

    Without DDP it only wraps ``state``.
    """
    if not dist.is_initialized():
        return Agreement(state, 0 if state is StepState.FAILED else None, message)
    states = torch.zeros(dist.get_world_size(), dtype=torch.int64, device=_collective_device())
    states[dist.get_rank()] = state
    dist.all_reduce(states)
    states = states.tolist()
    if max(states) < StepState.FAILED:
        return Agreement(StepState(max(states)))
    failed_rank = states.index(StepState.FAILED)
    shared = [message]
    dist.broadcast_object_list(shared, src=failed_rank)
    return Agreement(StepState.FAILED, failed_rank, shared[0])


def reduce_dict(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Averages scalar tensors over all processes, as torchvision's references do (identity without DDP)."""
    if not dist.is_initialized():
        return {name: value.detach() for name, value in values.items()}
    names = sorted(values)  # the same order on every process
    stacked = torch.stack([values[name].detach().float() for name in names])
    dist.all_reduce(stacked)
    return dict(zip(names, stacked / dist.get_world_size()))


def gather_to_main(items: list[Any]) -> list[Any]:
    """The items of every process, concatenated in rank order, on rank 0; an empty list on the others."""
    if not dist.is_initialized():
        return list(items)
    shares: list[list[Any]] | None = [[] for _ in range(dist.get_world_size())] if is_main_process() else None
    dist.gather_object(items, shares, dst=0)
    return [item for share in shares for item in share] if shares is not None else []


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) to every process: each process's own last batch moved
    its copy after DDP's last broadcast, and all of them must evaluate the model that rank 0 saves."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def _collective_device() -> torch.device:
    """nccl moves only CUDA tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
