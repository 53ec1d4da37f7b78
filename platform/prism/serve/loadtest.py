"""A steady request rate against a served model: open-loop sends at fixed times, each one's outcome and latency.

Open loop: request ``i`` starts at ``i / rate`` seconds whatever happened to the ones before (as real traffic
does), on a bounded pool of threads, so a stalled service shows up as latency and failures instead of a
lower request count. The run is bounded in count (``rate * duration_s`` requests) and time (every request
has the caller's timeout), and stops by itself::

    from prism.serve.client import Client
    from prism.serve.loadtest import steady_load

    client = Client("http://127.0.0.1:8000", timeout_s=30)
    report = steady_load(lambda i: client.predict([image]), rate=20, duration_s=60)
    report.summary()   # {"requests": 1200, "succeeded": 1200, "success_rate": 1.0, "p50_ms": ..., ...}

``send(i)`` runs in a worker thread; returning means success, raising means failure (the exception's type
and message are kept). Give each thread its own HTTP session where the client is not thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LoadReport", "Outcome", "steady_load"]


@dataclass(frozen=True)
class Outcome:
    """One request: when it started (s after the run began), how long it took, and whether it succeeded."""

    index: int
    start_s: float
    latency_s: float
    ok: bool
    error: str | None = None


@dataclass
class LoadReport:
    """Every request's :class:`Outcome`, in start order, and the run's figures."""

    rate: float
    duration_s: float
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def succeeded(self) -> int:
        return sum(o.ok for o in self.outcomes)

    @property
    def success_rate(self) -> float:
        return self.succeeded / len(self.outcomes) if self.outcomes else float("nan")

    def latency_ms(self, q: float, ok_only: bool = True) -> float:
        """The ``q``-th percentile of request latency in ms (successful requests only by default)."""
        ms = [1e3 * o.latency_s for o in self.outcomes if o.ok or not ok_only]
        return float(np.percentile(ms, q)) if ms else float("nan")

    def errors(self) -> Counter[str]:
        """Failures by error (the exception's type and first line)."""
        return Counter(o.error or "?" for o in self.outcomes if not o.ok)

    def summary(self) -> dict[str, object]:
        return {"requests": len(self.outcomes), "succeeded": self.succeeded, "success_rate": self.success_rate,
                "p50_ms": self.latency_ms(50), "p99_ms": self.latency_ms(99), "max_ms": self.latency_ms(100),
                "errors": dict(self.errors())}


def steady_load(send: Callable[[int], object], rate: float, duration_s: float, max_in_flight: int = 32
                ) -> LoadReport:
    """Call ``send(i)`` at ``i / rate`` s for ``i < rate * duration_s`` (at most ``max_in_flight`` at once);
    wait for every call and return their outcomes.

    Raises:
        ValueError: a non-positive rate or duration, or ``max_in_flight < 1``.
    """
    if rate <= 0 or duration_s <= 0 or max_in_flight < 1:
        raise ValueError(f"rate, duration_s and max_in_flight must be positive, got {rate}, {duration_s}, "
                         f"{max_in_flight}")
    n = int(round(rate * duration_s))
    report = LoadReport(rate, duration_s)
    results: list[Outcome | None] = [None] * n
    slots = threading.BoundedSemaphore(max_in_flight)
    t0 = time.perf_counter()

    def one(i: int) -> None:
        start = time.perf_counter()
        try:
            send(i)
        except Exception as exc:
            first = (str(exc).splitlines() or [""])[0][:200]
            results[i] = Outcome(i, start - t0, time.perf_counter() - start, False, f"{type(exc).__name__}: {first}")
        else:
            results[i] = Outcome(i, start - t0, time.perf_counter() - start, True)
        finally:
            slots.release()

    with ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="prism-load") as pool:
        for i in range(n):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            slots.acquire()  # over max_in_flight: this send starts late, and its latency counts from then
            pool.submit(one, i)
    report.outcomes = [o for o in results if o is not None]
    return report
