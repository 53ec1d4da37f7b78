"""Typed configuration: the job spec (a union of task configs by ``task.name``), overrides, and the
strict base model whose errors name the key. Importing this package imports no torch.

The names load on first use (PEP 562): a task's config module imports :mod:`prism.config.schema`, and the
job spec (:mod:`prism.config.job`) imports every task's config module to build its union, so an eager
package import would make ``from prism.tasks.multihead.config import …`` as a program's first import
circular.
"""

from importlib import import_module
from typing import Any

_WHERE = {
    "AugmentConfig": "data", "DataConfig": "data", "SyntheticDataConfig": "data", "WebDatasetConfig": "data",
    "BackboneConfig": "job", "JobConfig": "job", "LoraSettings": "job", "StageConfig": "job",
    "TrackingConfig": "job", "TrainConfig": "job", "apply_overrides": "job", "dump_config": "job",
    "load_config": "job", "ConfigError": "schema", "StrictModel": "schema",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'prism.config' has no attribute {name!r}")
    value = getattr(import_module(f"prism.config.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
