"""The base of every task's config class (``task:`` in a job spec), torch-free.

A task config declares, besides its fields, what the platform needs to know about the task before any
model exists: the metric that ranks checkpoints by default, whether higher is better, and whether the task
trains at all (a task that only extracts features runs with ``stages: []``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from prism.config.schema import StrictModel

__all__ = ["TaskConfig"]


class TaskConfig(StrictModel):
    """Fields common to every task config; subclasses set ``name: Literal["<task>"]``."""

    name: str
    default_metric: ClassVar[str] = "val/loss"
    """What ``train.metric`` is when the job spec does not set it (a key the task's metrics report)."""
    default_mode: ClassVar[Literal["max", "min"]] = "min"
    trains: ClassVar[bool] = True
    """False for a task that runs no training (``stages`` must then be empty)."""
