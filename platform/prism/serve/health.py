"""Whether a replica's model still works: batch outcomes, a probe when batches fail, Serve's health check.

A replica whose model is broken (a device in an error state, weights gone non-finite) fails every batch
while its process is alive and its HTTP server answers: Serve would keep routing requests to it. The
replica therefore records each batch's outcome (:class:`ModelHealth`) and its health check, which Serve
calls every ``health_check_period_s``, decides:

- no batch failed since the last success → healthy (a busy, working replica pays nothing);
- batches failed → the model runs one *probe*, the last image it answered successfully, again; if that
  works the failures were the inputs' (the replica stays), otherwise the replica is unhealthy: its
  requests are answered ``503 model_unhealthy`` (retryable: another replica can answer) and Serve replaces
  it. A replica that never answered anything has no probe; it turns unhealthy after ``threshold`` failed
  batches in a row.

A batch whose results hold NaN or infinite numbers fails like a batch that raised (:func:`check_finite`):
a number no client can use is not an answer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["ModelHealth", "NonFiniteOutput", "check_finite"]

T = TypeVar("T")

log = logging.getLogger(__name__)


class NonFiniteOutput(RuntimeError):
    """A result holds NaN or an infinite number."""


def _non_finite_at(value: Any, path: str) -> str | None:
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            found = _non_finite_at(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _non_finite_at(item, f"{path}[{i}]")
            if found:
                return found
    return None


def check_finite(results: Sequence[Any]) -> None:
    """Raise :class:`NonFiniteOutput` naming the first NaN / infinite float in ``results`` (JSON-like values:
    dicts, lists, tuples, floats; other values are not inspected)."""
    for i, result in enumerate(results):
        where = _non_finite_at(result, f"result[{i}]")
        if where:
            raise NonFiniteOutput(f"the model produced a non-finite number at {where}")


class ModelHealth(Generic[T]):
    """Outcomes of one replica's batches of items ``T`` and the verdict of its health check.

    Args:
        threshold: failed batches in a row that make a replica without a probe unhealthy.
    """

    def __init__(self, threshold: int = 3):
        if threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {threshold}")
        self.threshold = threshold
        self.failures = 0
        self.last_error: str | None = None
        self.unhealthy: str | None = None
        """Why the last health check failed; None while healthy."""
        self._probe: T | None = None

    def succeeded(self, items: Sequence[T]) -> None:
        """A batch answered: failures reset, its first item becomes the probe."""
        self.failures = 0
        if items:
            self._probe = items[0]

    def failed(self, exc: BaseException) -> None:
        """A batch raised (not a refusal of bad input: those never reach the model)."""
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"

    def reset(self) -> None:
        """A new model version is served: nothing known about it yet."""
        self.failures = 0
        self.last_error = None
        self.unhealthy = None
        self._probe = None

    async def check(self, run: Callable[[list[T]], Awaitable[Sequence[Any]]]) -> None:
        """Serve's health check: return if the model works, raise ``RuntimeError`` saying why not.

        ``run(items)`` runs a batch on the model (its results are checked with :func:`check_finite`).
        """
        if self.failures == 0:
            self.unhealthy = None
            return
        if self._probe is None:
            if self.failures < self.threshold:
                return
            self.unhealthy = (f"{self.failures} batches failed in a row and none ever succeeded; last: "
                              f"{self.last_error}")
            log.error("model unhealthy: %s", self.unhealthy)
            raise RuntimeError(self.unhealthy)
        try:
            check_finite(await run([self._probe]))
        except Exception as exc:
            self.unhealthy = (f"{self.failures} batches failed (last: {self.last_error}) and a request it "
                              f"answered before fails now too ({type(exc).__name__}: {exc})")
            log.error("model unhealthy: %s", self.unhealthy)
            raise RuntimeError(self.unhealthy) from exc
        self.failures = 0  # the failures were their inputs'
        self.unhealthy = None
