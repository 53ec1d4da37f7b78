"""Typed configuration: the job spec (a union of task configs by ``task.name``), overrides, and the
strict base model whose errors name the key. Importing this package imports no torch."""

from prism.config.data import AugmentConfig, DataConfig, SyntheticDataConfig, WebDatasetConfig
from prism.config.job import (
    BackboneConfig,
    JobConfig,
    LoraSettings,
    StageConfig,
    TrackingConfig,
    TrainConfig,
    apply_overrides,
    dump_config,
    load_config,
)
from prism.config.schema import ConfigError, StrictModel

__all__ = [
    "AugmentConfig",
    "BackboneConfig",
    "ConfigError",
    "DataConfig",
    "JobConfig",
    "LoraSettings",
    "StageConfig",
    "StrictModel",
    "SyntheticDataConfig",
    "TrackingConfig",
    "TrainConfig",
    "WebDatasetConfig",
    "apply_overrides",
    "dump_config",
    "load_config",
]
