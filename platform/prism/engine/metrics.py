"""Metric accumulators across workers: sum the states (fast path) or gather and merge them.

:func:`merged` turns each worker's :class:`~prism.tasks.base.MetricAccumulator` into one that holds the
statistics of every worker, the same on every rank, so metrics are computed over the whole validation set.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prism.runtime.distributed import all_gather_objects, all_reduce_sum, is_distributed
from prism.tasks.base import MetricAccumulator

__all__ = ["merged", "sum_states"]


def sum_states(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A summable state (``{name: tensor}``) summed over every worker in one collective (float64)."""
    names = sorted(state)
    tensors = [torch.as_tensor(state[n]).detach().cpu() for n in names]
    exact = (torch.float64, torch.int64, torch.int32)  # summed in float64 without losing what they hold
    bad = [n for n, t in zip(names, tensors, strict=True) if t.dtype not in exact]
    if bad:
        raise TypeError(f"summable metric state {bad} must be float64 or integer tensors")
    flat = all_reduce_sum(torch.cat([t.double().flatten() for t in tensors]))
    out, offset = {}, 0
    for n, t in zip(names, tensors, strict=True):
        out[n] = flat[offset:offset + t.numel()].reshape(t.shape).to(t.dtype)
        offset += t.numel()
    return out


def merged(acc: MetricAccumulator, fresh: Callable[[], MetricAccumulator]) -> MetricAccumulator:
    """``acc`` of this worker → a new accumulator (from ``fresh()``) with every worker's statistics.

    Not distributed: ``acc`` itself. ``acc.summable``: the states are all-reduced; otherwise every state is
    gathered (``all_gather_object``) and merged in rank order.
    """
    if not is_distributed():
        return acc
    out = fresh()
    if acc.summable:
        out.merge(sum_states(acc.state()))
    else:
        for state in all_gather_objects(acc.state()):
            out.merge(state)
    return out
