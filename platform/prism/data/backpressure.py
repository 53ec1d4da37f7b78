"""Back-pressure for Prism's decode pipelines: every CPU decoding, at most a few blocks ahead of the consumer.

Ray Data 2.60 budgets each operator through its resource-reservation allocator. For a one-operator decode
pipeline feeding an iterator, that allocator keeps about one task running at a time (measured: 20 tasks of
0.2 s on 2 CPUs take 4.3 s while iterated, 2.3 s without the allocator; on 4 CPUs half of them run; the first
second sees no CPUs at all), so decoding used ~1.3 of 2 cores and read at 0.65 of a ``DataLoader`` on the same
files. Switching the allocator off fills every CPU, but it also switches off the only bound on how far ahead
of a slow consumer the decode tasks run: the whole epoch piled up in the object store.

:func:`configure_backpressure` does both halves: the allocator off, and :class:`QueuedOutputCap` in its place,
a policy that starts a task only while fewer than ``max_queued_tasks`` of the operator's outputs are running
or waiting for the consumer. Ray's own scheduler still runs no more tasks than there are free CPUs (a Ray
Train worker group keeps its own).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ray.data._internal.execution.backpressure_policy import ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY
from ray.data._internal.execution.backpressure_policy.backpressure_policy import BackpressurePolicy
from ray.data._internal.execution.operators.map_operator import MapOperator

if TYPE_CHECKING:
    from ray.data import DataContext
    from ray.data._internal.execution.interfaces.physical_operator import PhysicalOperator

__all__ = ["MAX_QUEUED_TASKS_KEY", "QueuedOutputCap", "configure_backpressure"]

MAX_QUEUED_TASKS_KEY = "prism.max_queued_tasks"
"""``DataContext`` config key: how many task outputs an operator may have waiting for its consumer."""


def default_max_queued_tasks() -> int:
    """Two task outputs per CPU of this machine, at least 4: enough to keep every decoder busy while the
    consumer takes one, few enough to bound memory (4 blocks of 64 images at 224 px: 37 MiB)."""
    return max(4, 2 * (os.cpu_count() or 1))


class QueuedOutputCap(BackpressurePolicy):
    """Starts a map operator's next task only while fewer than ``max_queued_tasks`` of its task outputs are
    running or waiting: tasks in flight, blocks in its output queue, blocks queued at the operators it feeds.

    Counted in tasks and blocks (one block per decode task), not bytes: without the reservation allocator
    Ray Data's resource manager charges no object-store bytes to an operator. What the iterator has already
    taken is bounded by its own prefetch (``prefetch_batches``).
    """

    @property
    def name(self) -> str:
        return "QueuedOutputCap"

    def can_add_input(self, op: PhysicalOperator) -> bool:
        if not isinstance(op, MapOperator):
            return True
        cap = int(self._data_context.get_config(MAX_QUEUED_TASKS_KEY, default_max_queued_tasks()))
        waiting = op.num_active_tasks() + self._topology[op].total_enqueued_output_blocks()
        for downstream in op.output_dependencies:
            if downstream in self._topology:
                waiting += self._topology[downstream].total_enqueued_input_blocks()
        return waiting < cap


def configure_backpressure(ctx: DataContext, max_queued_tasks: int | None = None) -> None:
    """Prism's back-pressure on a dataset's own ``DataContext`` (see the module docstring).

    Raises:
        ValueError: ``max_queued_tasks < 1``.
    """
    if max_queued_tasks is not None and max_queued_tasks < 1:
        raise ValueError(f"max_queued_tasks must be >= 1, got {max_queued_tasks}")
    ctx.op_resource_reservation_enabled = False
    ctx.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, [QueuedOutputCap])
    if max_queued_tasks is not None:
        ctx.set_config(MAX_QUEUED_TASKS_KEY, max_queued_tasks)
