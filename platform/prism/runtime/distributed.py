"""Sums across Ray Train workers that work with every process-group backend.

Ray Train starts the process group with NCCL when the workers have GPUs. NCCL only reduces CUDA tensors: an
``all_reduce`` of a CPU tensor then fails with "No backend type associated with device type cpu". Prism's
counters (loss sums, confusion matrices) live on the CPU, so they travel to the backend's device for the
collective and come back.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_gather_objects", "all_reduce_sum", "collective_device", "is_distributed"]


def collective_device() -> torch.device:
    """Where tensors must be for a collective of the current process group: CUDA under NCCL, else CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over every worker, on ``values``' own device; unchanged when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    moved = values.to(collective_device())
    dist.all_reduce(moved, op=dist.ReduceOp.SUM)
    return moved.to(values.device)


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def all_gather_objects(obj: object) -> list[object]:
    """Every worker's ``obj`` (picklable), in rank order; ``[obj]`` when not distributed."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
