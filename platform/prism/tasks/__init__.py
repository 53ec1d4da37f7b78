"""Task registry: one subpackage per task, looked up by the name in ``task.name``."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import TYPE_CHECKING

from prism.tasks.base import MetricAccumulator, Task

if TYPE_CHECKING:
    from prism.config import JobConfig

__all__ = ["MetricAccumulator", "Task", "build_task", "list_tasks", "register_task"]

_TASKS: dict[str, Callable[[], type[Task]]] = {}


def register_task(name: str, loader: Callable[[], type[Task]]) -> None:
    """Register a task class under ``name`` (``loader`` imports it lazily)."""
    _TASKS[name] = loader


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def build_task(cfg: JobConfig) -> Task:
    """The task object for ``cfg.task.name``; unknown names list the registered tasks."""
    name = cfg.task.name
    if name not in _TASKS:
        close = difflib.get_close_matches(name, list(_TASKS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown task '{name}'; registered tasks: {', '.join(list_tasks())}.{hint}")
    return _TASKS[name]()(cfg)


def _multihead() -> type[Task]:
    from prism.tasks.multihead.task import MultiHeadTask

    return MultiHeadTask


register_task("multihead", _multihead)
