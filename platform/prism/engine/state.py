"""Where training stands: stage, epoch, best metric, patience, history — saved in every checkpoint."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["TrainState", "is_better"]


def is_better(value: float, best: float | None, mode: str) -> bool:
    """Strict improvement of ``value`` over ``best`` (``None`` = nothing yet); NaN never improves."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


@dataclass
class TrainState:
    """Position in the stage plan; ``epoch`` counts epochs over the whole plan (1-based once started)."""

    stage_index: int = 0
    epoch_in_stage: int = 0
    epoch: int = 0
    best: float | None = None
    stage_best: float | None = None
    bad_epochs: int = 0
    optimizer_stage: int = -1
    history: list[dict[str, float]] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> TrainState:
        return cls(**json.loads(Path(path).read_text()))

    def next_position(self, epochs_per_stage: list[int], stopped_early: bool) -> TrainState:
        """The position to resume from after the epoch this state describes (what checkpoints store)."""
        nxt = TrainState(**asdict(self))
        nxt.history = list(self.history)
        if stopped_early or self.epoch_in_stage >= epochs_per_stage[self.stage_index]:
            nxt.stage_index += 1
            nxt.epoch_in_stage = 0
            nxt.stage_best = None
            nxt.bad_epochs = 0
        return nxt
