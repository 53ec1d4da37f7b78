"""The base of every task's config class (``task:`` in a job spec), torch-free.

A task config declares, besides its fields, what the platform needs to know about the task before any
model exists: the metric that ranks checkpoints by default, whether higher is better, and whether the task
trains at all (a task that only extracts features runs with ``stages: []``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

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
    summary_metrics: ClassVar[tuple[str, ...]] = ()
    """Metrics shown on each epoch's console line and plotted as curves, besides the losses and
    ``train.metric``."""
    data_sources: ClassVar[tuple[str, ...]] = ("csv",)
    """The ``data.source`` kinds the task reads."""
    synthetic_generator: ClassVar[str] = "circles"
    """The synthetic data generator (``prism.data.synth``) a job of this task uses when it names no data."""

    def complete(self, data: Any) -> None:
        """Fill what the task reads from its data section before anything is built (``data``: the job's
        :class:`~prism.config.data.DataConfig`), e.g. detection's categories from the COCO file, so that the
        resolved config — and every bundle — carries them. Nothing by default."""
        return None

    def synthetic_options(self) -> dict[str, Any]:
        """Keyword arguments for :attr:`synthetic_generator` that make its data fit this config (e.g. the
        class names); JSON-able, they enter the name of the cached folder."""
        return {}
