"""Bad data stops a training run once, with the data's own message.

A :class:`~prism.data.table.BadRowsError` raised while a worker streams its shard (a sample that does not
decode, a label that is not a class — the message names each shard and key, or file and CSV line) reaches
the driver wrapped three times: in a ``RayTaskError`` of the Ray Data task, in the worker's failure, and in
Ray Train's ``WorkerGroupError`` with a traceback of the training loop. Ray Train also restarts the worker
group ``train.max_failures`` times, and each attempt reads the data up to the same bad sample again.

- :class:`StopOnDataErrors` (a Ray Train callback, run on the controller) turns a worker's data error into
  a controller error, which Ray Train does not retry: the run stops at the first attempt.
- :func:`data_error` finds the data error inside whatever ``trainer.fit()`` raised, so the driver can raise
  it as itself (``prism train`` prints it as ``prism: error: …`` and exits with 2).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ray.train import UserCallback

from prism.data.table import BadRowsError

__all__ = ["StopOnDataErrors", "data_error"]

RAY_DATA_NOTE = "\nFailed to apply UDF transform after"
"""Where Ray Data's retry note starts, which it appends to a map function's exception message."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps: causes, contexts, ``RayTaskError.cause``, Ray Train's
    ``worker_failures`` and ``controller_failure``; each once."""
    stack, seen = [exc], set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        yield e
        stack.extend([e.__cause__, e.__context__, getattr(e, "cause", None), getattr(e, "controller_failure", None)])
        stack.extend(getattr(e, "worker_failures", {}).values())


def data_error(exc: BaseException) -> BadRowsError | None:
    """A plain :class:`~prism.data.table.BadRowsError` with the message of the one inside ``exc`` (Ray's
    retry note left out), or ``None`` when ``exc`` is not about bad data."""
    for e in _chain(exc):
        if isinstance(e, BadRowsError):
            cause = getattr(e, "cause", None)  # a RayTaskError(BadRowsError): the original, without traceback
            original = cause if isinstance(cause, BadRowsError) else e
            text = original.args[0] if original.args and isinstance(original.args[0], str) else str(original)
            return BadRowsError(text.split(RAY_DATA_NOTE, 1)[0])
    return None


class StopOnDataErrors(UserCallback):
    """Ray Train callback: when a worker failed on bad data, raise it on the controller, which ends the run
    without the restarts meant for lost workers (they would read up to the same sample again)."""

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        for exc in worker_exceptions.values():
            error = data_error(exc)
            if error is not None:
                raise error
