"""A data error inside a failed training run is found and said once (``prism.engine.failures``), on the
wrappings Ray puts around it: a Ray Data task's ``RayTaskError``, Ray Train's ``WorkerGroupError`` and
``ControllerError``, Ray Data's retry note."""

from __future__ import annotations

import pytest
from ray.exceptions import RayTaskError
from ray.train import ControllerError, WorkerGroupError

from prism.data.table import BadRowsError
from prism.engine.failures import StopOnDataErrors, data_error

MESSAGE = ("1 bad sample(s):\n  s3://b/train-000001.tar: sample '00000010': undecodable image\n"
           "Fix the shards, or set data.on_bad_rows=skip to drop such samples (they are counted and logged).")
RAY_NOTE = ("\nFailed to apply UDF transform after 1/1 attempts (total backoff 0.0s).\nTo change retry "
            "attempts, backoff, or which errors are retried, configure `ray.data.DataContext.get_current()`")


def in_a_ray_task(exc: Exception) -> Exception:
    """``exc`` as a worker sees it when a Ray Data task raised it (a RayTaskError that is also ``exc``'s type)."""
    return RayTaskError("MapBatches(DecodeShardSamples)", "Traceback (most recent call last): …", exc
                        ).as_instanceof_cause()


def test_the_data_error_is_found_in_every_wrapping_and_said_without_ray_s_notes():
    raised_in_task = in_a_ray_task(BadRowsError(MESSAGE + RAY_NOTE))
    assert isinstance(raised_in_task, BadRowsError) and str(raised_in_task) != MESSAGE
    for wrapped in (raised_in_task,
                    WorkerGroupError("[Rank 0 Error Snippet] …", {0: ValueError("other rank"), 1: raised_in_task}),
                    ControllerError(BadRowsError(MESSAGE))):
        error = data_error(wrapped)
        assert type(error) is BadRowsError and str(error) == MESSAGE
    for chained in ("cause", "context"):  # a data error behind another: `raise … from error`, or while handling it
        try:
            try:
                raise BadRowsError(MESSAGE)
            except BadRowsError as error:
                if chained == "cause":
                    raise RuntimeError("training stopped") from error
                raise RuntimeError("training stopped")  # noqa: B904 — the implicit context is the case tested
        except RuntimeError as exc:
            assert str(data_error(exc)) == MESSAGE

def test_other_failures_are_not_data_errors():
    lost = WorkerGroupError("worker died", {0: in_a_ray_task(RuntimeError("CUDA out of memory"))})
    assert data_error(lost) is None and data_error(ControllerError(TimeoutError())) is None
    StopOnDataErrors().after_exception(None, {0: lost})  # a lost worker: Ray Train retries, nothing raised here


def test_the_callback_stops_the_run_on_bad_data():
    with pytest.raises(BadRowsError, match=r"train-000001\.tar: sample '00000010'") as caught:
        StopOnDataErrors().after_exception(None, {0: RuntimeError("rank 0 fine"),
                                                  1: in_a_ray_task(BadRowsError(MESSAGE + RAY_NOTE))})
    assert "Failed to apply" not in str(caught.value)
