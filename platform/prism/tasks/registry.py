"""The task registry: name → its config class and its task class, imported lazily.

Torch-free on purpose: :mod:`prism.config` builds the ``task`` union from :func:`task_config_classes`
(importing only each task's ``config`` module), and only :func:`build_task` imports a task's model code::

    register_task("multihead", config="prism.tasks.multihead.config:MultiHeadTaskConfig",
                  task="prism.tasks.multihead.task:MultiHeadTask")
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prism.config import JobConfig
    from prism.tasks.base import Task

__all__ = ["TaskEntry", "build_task", "list_tasks", "register_task", "task_class", "task_config_classes",
           "unknown_task_message"]


@dataclass(frozen=True)
class TaskEntry:
    """Where a task lives: ``"module:attribute"`` of its config class and of its :class:`Task` class."""

    name: str
    config: str
    task: str


_TASKS: dict[str, TaskEntry] = {}


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def register_task(name: str, *, config: str, task: str) -> None:
    """Register task ``name``: ``config`` and ``task`` are ``"module:attribute"`` paths (imported lazily)."""
    if name in _TASKS:
        raise ValueError(f"task {name!r} is already registered ({_TASKS[name].task}); pick another name")
    _TASKS[name] = TaskEntry(name, config, task)


def list_tasks() -> list[str]:
    """Sorted names of every registered task."""
    return sorted(_TASKS)


def unknown_task_message(name: object) -> str:
    """``unknown task 'x'; registered tasks: …`` with the closest name suggested."""
    close = difflib.get_close_matches(str(name), list(_TASKS), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown task {name!r}; registered tasks: {', '.join(list_tasks())}.{hint}"


def task_config_classes() -> list[type]:
    """The config class of every registered task, in name order (their modules import no torch)."""
    return [_load(_TASKS[n].config) for n in list_tasks()]


def task_class(name: str) -> type[Task]:
    """The :class:`Task` subclass registered as ``name``; ``ValueError`` listing the registered names."""
    if name not in _TASKS:
        raise ValueError(unknown_task_message(name))
    return _load(_TASKS[name].task)


def build_task(cfg: JobConfig) -> Task:
    """The task object for ``cfg.task.name``."""
    return task_class(cfg.task.name)(cfg)


register_task("multihead", config="prism.tasks.multihead.config:MultiHeadTaskConfig",
              task="prism.tasks.multihead.task:MultiHeadTask")
register_task("classify", config="prism.tasks.classify.config:ClassifyTaskConfig",
              task="prism.tasks.classify.task:ClassifyTask")
register_task("features", config="prism.tasks.features.config:FeaturesTaskConfig",
              task="prism.tasks.features.task:FeaturesTask")
register_task("detection", config="prism.tasks.detection.config:DetectionTaskConfig",
              task="prism.tasks.detection.task:DetectionTask")
register_task("segment", config="prism.tasks.segment.config:SegmentTaskConfig",
              task="prism.tasks.segment.task:SegmentTask")
