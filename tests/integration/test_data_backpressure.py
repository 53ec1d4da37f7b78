"""Prism's decode pipelines on the session Ray (2 CPUs): every CPU decodes, and a slow consumer holds the
decode tasks back (prism.data.backpressure)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from ray.data._internal.execution.backpressure_policy import ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY

from prism.data.backpressure import MAX_QUEUED_TASKS_KEY, configure_backpressure
from prism.data.datasets import configure_context

pytestmark = [pytest.mark.ray]

TASK_S = 0.3


def stamped(batch: dict) -> dict:
    """A decode stand-in: sleeps (the GIL is free, so two tasks overlap on two CPUs) and stamps its run."""
    t0 = time.time()
    time.sleep(TASK_S)
    n = len(batch["id"])
    return {"id": batch["id"], "t0": np.full(n, t0), "t1": np.full(n, time.time()), "pid": np.full(n, os.getpid())}


def dataset(n_tasks: int, prism: bool):
    import ray.data

    ds = ray.data.from_items([{"id": i} for i in range(8 * n_tasks)], override_num_blocks=n_tasks)
    ds = ds.map_batches(stamped, batch_size=8)
    if prism:
        configure_context(ds.context, deterministic=False)
    return ds


def most_at_once(runs: list[tuple[float, float]]) -> int:
    events = sorted([(t0, 1) for t0, _ in runs] + [(t1, -1) for _, t1 in runs])
    at_once = peak = 0
    for _, step in events:
        at_once += step
        peak = max(peak, at_once)
    return peak


def overlap(runs: list[tuple[float, float]]) -> float:
    """Seconds each task (by start) overlaps the next, summed."""
    return sum(max(0.0, min(a1, b1) - max(a0, b0)) for (a0, a1), (b0, b1) in zip(runs, runs[1:], strict=False))


def task_runs(batches) -> list[tuple[float, float]]:
    return sorted({(float(b["t0"][0]), float(b["t1"][0])) for b in batches})


def test_iterated_decoding_runs_a_task_per_cpu(ray_local):
    """Ray Data's reservation allocator runs one task of a lone map operator at a time while it is iterated
    (two at once at most briefly); Prism's context keeps both CPUs decoding."""
    for prism in (False, True):  # warm both: worker start-up is not what is compared
        list(dataset(4, prism).iter_batches(batch_size=8))
    ray_default = task_runs(dataset(12, prism=False).iter_batches(batch_size=8))
    ours = task_runs(dataset(12, prism=True).iter_batches(batch_size=8))
    assert len(ray_default) == len(ours) == 12
    overlap_ours, overlap_default = overlap(ours), overlap(ray_default)
    assert most_at_once(ours) == 2
    assert overlap_ours > 0.5 * 11 * TASK_S  # consecutive tasks overlap most of their run
    assert overlap_default < overlap_ours / 2  # what Prism's setting changes


def most_ahead(ds) -> int:
    """Iterate ``ds`` with a consumer 3x slower than one decoder; the most tasks ever started beyond the
    batches consumed."""
    taken: list[float] = []
    starts: list[float] = []
    for batch in ds.iter_batches(batch_size=8, prefetch_batches=1):
        taken.append(time.time())
        starts.append(float(batch["t0"][0]))
        time.sleep(3 * TASK_S)
    assert len(starts) == 16
    return max(sum(s <= t for s in starts) - sum(c <= t for c in taken) for t in starts)


def test_a_slow_consumer_holds_decoding_back(ray_local):
    """At most ``max_queued_tasks`` outputs run or wait in the operator's queue; the iterator holds a few
    more blocks of its own. Without the cap (Ray's allocator off, as Prism runs it) decoding runs ahead
    through the whole epoch."""
    capped = dataset(16, prism=True)
    configure_backpressure(capped.context, max_queued_tasks=2)
    assert capped.context.get_config(MAX_QUEUED_TASKS_KEY) == 2
    uncapped = dataset(16, prism=True)
    uncapped.context.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, [])
    ahead_capped, ahead_uncapped = most_ahead(capped), most_ahead(uncapped)
    assert ahead_capped <= 2 + 3, ahead_capped  # the cap + what the iterator prefetches and hands over
    assert ahead_uncapped >= 10, ahead_uncapped  # 16 tasks, a consumer 3x slower than one of 2 decoders


def test_max_queued_tasks_must_be_positive():
    import ray.data

    with pytest.raises(ValueError, match="max_queued_tasks must be >= 1"):
        configure_backpressure(ray.data.DataContext(), max_queued_tasks=0)
