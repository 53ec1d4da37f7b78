"""Train-loop bookkeeping without Ray: stage positions and improvement."""

import pytest

from prism.engine.state import TrainState, is_better


@pytest.mark.parametrize(
    ("value", "best", "mode", "expected"),
    [(0.5, None, "max", True), (0.5, 0.4, "max", True), (0.4, 0.4, "max", False), (0.3, 0.4, "min", True),
     (float("nan"), None, "max", False), (0.5, 0.4, "min", False)],
)
def test_is_better(value, best, mode, expected):
    assert is_better(value, best, mode) is expected


def test_next_position_moves_to_next_stage_at_end_or_early_stop(tmp_path):
    s = TrainState(stage_index=0, epoch_in_stage=2, epoch=2, stage_best=0.5, bad_epochs=1)
    assert s.next_position([2, 3], stopped_early=False).stage_index == 1
    mid = TrainState(stage_index=1, epoch_in_stage=1, epoch=3, bad_epochs=2)
    stay = mid.next_position([2, 3], stopped_early=False)
    assert (stay.stage_index, stay.epoch_in_stage, stay.bad_epochs) == (1, 1, 2)
    stop = mid.next_position([2, 3], stopped_early=True)
    assert (stop.stage_index, stop.epoch_in_stage, stop.bad_epochs, stop.stage_best) == (2, 0, 0, None)
    stop.save(tmp_path / "state.json")
    assert TrainState.load(tmp_path / "state.json") == stop

