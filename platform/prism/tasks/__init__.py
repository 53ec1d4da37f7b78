"""Tasks: the contract (:mod:`prism.tasks.base`), the registry (:mod:`prism.tasks.registry`) and one
subpackage per task. Importing this package imports no torch; ``Task`` and friends load on first use."""

from __future__ import annotations

import importlib

from prism.tasks.registry import build_task, list_tasks, register_task, task_class, task_config_classes

__all__ = ["HeadSite", "MetricAccumulator", "Task", "TaskConfig", "build_task", "list_tasks", "register_task",
           "task_class", "task_config_classes"]

_LAZY = {"Task": "prism.tasks.base", "MetricAccumulator": "prism.tasks.base", "HeadSite": "prism.tasks.base",
         "TaskConfig": "prism.tasks.config"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prism.tasks' has no attribute {name!r}")
