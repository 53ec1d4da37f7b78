"""Dynamic batching for one replica: single items from concurrent requests → lists for one batch function.

:class:`Batcher` keeps one queue and one consumer task on the replica's event loop. The consumer forms a
batch only when the previous one has finished: it takes everything that queued up meanwhile (at most
``max_batch_size`` items) and runs it at once. If fewer than ``max_batch_size`` items are waiting, it waits
for more until the *oldest* item has waited ``batch_wait_timeout_s``; an item that already waited that long
while the model was busy runs without any further wait. So under load the batch size follows the load
(the busier the model, the larger the next batch), and a lone request waits at most the timeout (0: not
at all).

Why not ``@serve.batch``: Ray forms the next batch on a timer (``batch_wait_timeout_s`` after its first
item) while the previous batch still runs, then queues it behind the running one
(``max_concurrent_batches=1``), so what arrives during a forward pass is split over several small batches.
Measured with the clients of ``bench/serve_throughput.py`` (32 concurrent single-image requests, 2 CPUs):
with a 0 s timer Ray's batches averaged 2.3 images (this class: 8.5, the requests that had arrived); with a
10 ms timer they averaged 9 but every lone request waited 10 ms (p50 24 ms instead of 13 ms at
concurrency 1). ``@serve.batch`` also refuses to run outside a Serve replica, so it cannot be unit-tested;
this class needs no Ray at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["BatchStats", "Batcher"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    enqueued: float
    future: asyncio.Future[R] = field(repr=False)


@dataclass
class BatchStats:
    """What one batcher has run since it was created: how full its batches were under the load it saw."""

    sizes: Counter[int] = field(default_factory=Counter)  # batch size → number of batches of that size

    def record(self, size: int) -> None:
        self.sizes[size] += 1

    @property
    def batches(self) -> int:
        return sum(self.sizes.values())

    @property
    def items(self) -> int:
        return sum(size * n for size, n in self.sizes.items())

    @property
    def mean_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


class Batcher(Generic[T, R]):
    """Collects items submitted one at a time and hands them to ``fn`` as lists (see the module docstring).

    Args:
        fn: ``async fn(items: list[T]) -> list[R]``, one result per item in order. An exception fails every
            item of that batch (the batcher keeps running).
        max_batch_size: most items per call of ``fn``.
        batch_wait_timeout_s: longest time the oldest waiting item waits for a batch to fill while ``fn`` is
            idle; 0 runs whatever is queued as soon as ``fn`` is free.

    One consumer task per event loop, started by the first :meth:`submit` on that loop (a replica has one
    loop; tests may run several ``asyncio.run``), so ``fn`` never runs twice at the same time. Waits are
    measured with the loop's own clock (``loop.time()``, its timers), so a loop with virtual time runs
    the same logic without real waits. :attr:`stats` counts the batches run (failed ones included).
    """

    def __init__(self, fn: Callable[[list[T]], Awaitable[Sequence[R]]], max_batch_size: int = 16,
                 batch_wait_timeout_s: float = 0.0):
        self._fn = fn
        self.max_batch_size = 1
        self.batch_wait_timeout_s = 0.0
        self.configure(max_batch_size, batch_wait_timeout_s)
        self._queue: asyncio.Queue[_Pending[T, R]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.stats = BatchStats()

    def configure(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        """New limits; they apply from the next batch on (a running batch is not touched)."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if batch_wait_timeout_s < 0:
            raise ValueError(f"batch_wait_timeout_s must be >= 0, got {batch_wait_timeout_s}")
        self.max_batch_size = int(max_batch_size)
        self.batch_wait_timeout_s = float(batch_wait_timeout_s)

    async def submit(self, item: T) -> R:
        """Queue one item and wait for its result (or the exception of its batch)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._consume(self._queue), name="prism-batcher")
        assert self._queue is not None
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put_nowait(_Pending(item, loop.time(), future))
        return await future

    async def submit_many(self, items: Sequence[T]) -> list[R]:
        """Several items, each queued on its own (they may share batches with other callers); results in order."""
        return list(await asyncio.gather(*(self.submit(item) for item in items)))

    def close(self) -> None:
        """Stop the consumer; callers still waiting get ``CancelledError`` (call at shutdown only)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _next_batch(self, queue: asyncio.Queue[_Pending[T, R]]) -> list[_Pending[T, R]]:
        loop = asyncio.get_running_loop()
        first = await queue.get()
        batch = [first]
        deadline = first.enqueued + self.batch_wait_timeout_s
        while len(batch) < self.max_batch_size:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _consume(self, queue: asyncio.Queue[_Pending[T, R]]) -> None:
        batch: list[_Pending[T, R]] = []
        try:
            while True:
                batch = [p for p in await self._next_batch(queue) if not p.future.done()]  # done: caller gone
                if batch:
                    await self._run(batch)
                batch = []
        finally:  # cancelled (close, loop shutdown): nobody may wait forever
            while not queue.empty():
                batch.append(queue.get_nowait())
            for p in batch:
                p.future.cancel()

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        self.stats.record(len(batch))
        try:
            results = list(await self._fn([p.item for p in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
        except Exception as exc:  # every caller of this batch gets the error; later batches still run
            log.debug("batch of %d failed: %r", len(batch), exc)
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        for p, result in zip(batch, results, strict=True):
            if not p.future.done():
                p.future.set_result(result)
