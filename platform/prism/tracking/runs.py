"""Run logging helpers for the training driver: config, per-epoch metrics and stage tags.

All helpers log into the *active* MLflow run (``mlflow.start_run()``) and raise ``RuntimeError``
when there is none, instead of letting MLflow silently start a new run. The plot helpers live in
``prism.tracking.plots`` and are re-exported here.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

import mlflow
import yaml
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from prism.tracking.plots import log_figure, log_history_plots

__all__ = [
    "flatten_params",
    "log_epoch",
    "log_figure",
    "log_history_plots",
    "log_resolved_config",
    "require_active_run",
    "tag_stages",
]

log = logging.getLogger(__name__)

CONFIG_ARTIFACT = "config/resolved.yaml"
STAGE_INDEX_METRIC = "stage_index"
CURRENT_STAGE_TAG = "stage.current"
STAGE_COUNT_TAG = "stage.count"
STAGE_TAG_FIELDS = ("name", "kind", "epochs")


def require_active_run(caller: str) -> mlflow.ActiveRun:
    """The active run, or ``RuntimeError`` naming the call that needs one."""
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError(
            f"{caller}() needs an active MLflow run; call it inside `with mlflow.start_run():`"
        )
    return run


def flatten_params(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings to dotted keys with string values MLflow accepts as params.

    ``{"lora": {"rank": 8}, "stages": [{...}]}`` -> ``{"lora.rank": "8", "stages": "[{...}]"}``.
    Lists and tuples are stringified as JSON, values are cut to MLflow's param length limit
    (``MAX_PARAM_VAL_LENGTH``, 6000 characters), an empty mapping is kept as ``"{}"``.
    """
    flat: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, prefix=f"{name}."))
            continue
        if isinstance(value, Mapping):
            text = "{}"
        elif isinstance(value, list | tuple):
            text = json.dumps(list(value), default=str)
        else:
            text = str(value)
        flat[name] = text[:MAX_PARAM_VAL_LENGTH]
    return flat


def log_resolved_config(cfg_dict: Mapping[str, Any]) -> None:
    """Log the resolved job config as ``config/resolved.yaml`` and as flattened params.

    ``cfg_dict`` is plain data (e.g. ``JobConfig.model_dump(mode="json")``). The YAML keeps key
    order and round-trips with ``yaml.safe_load``. Params are immutable in MLflow: calling this
    twice in one run with different values raises ``MlflowException``.
    """
    require_active_run("log_resolved_config")
    mlflow.log_text(yaml.safe_dump(dict(cfg_dict), sort_keys=False), CONFIG_ARTIFACT)
    params = flatten_params(cfg_dict)
    if params:
        mlflow.log_params(params)


def log_epoch(
    metrics: Mapping[str, float], epoch: int, stage_index: int, stage_name: str
) -> dict[str, float]:
    """Log one epoch's metrics at ``step=epoch`` plus metric ``stage_index``; return what was logged.

    Keys may contain "/" (``"val/presence/accuracy"``). Values are anything ``float()`` accepts
    (Python/NumPy scalars, 0-d tensors); NaN and +-inf are skipped with a warning. Tag
    ``stage.current`` is set to ``stage_name`` so a live UI shows which stage is running.
    """
    require_active_run("log_epoch")
    logged: dict[str, float] = {}
    for key, value in metrics.items():
        number = float(value)
        if not math.isfinite(number):
            log.warning(
                "skipping non-finite metric %s=%s at epoch %d (stage %r)", key, number, epoch, stage_name
            )
            continue
        logged[key] = number
    logged[STAGE_INDEX_METRIC] = float(stage_index)
    mlflow.log_metrics(logged, step=int(epoch))
    mlflow.set_tag(CURRENT_STAGE_TAG, stage_name)
    return logged


def tag_stages(stages: list[Mapping[str, Any]]) -> dict[str, str]:
    """Tag the run with ``stage.<i>.name`` / ``.kind`` / ``.epochs`` and ``stage.count``.

    ``stages`` are plain dicts (e.g. ``[s.model_dump() for s in cfg.stages]``); fields a stage
    lacks are not tagged. Returns the tags set.
    """
    require_active_run("tag_stages")
    tags = {STAGE_COUNT_TAG: str(len(stages))}
    for i, stage in enumerate(stages):
        for field in STAGE_TAG_FIELDS:
            if stage.get(field) is not None:
                tags[f"stage.{i}.{field}"] = str(stage[field])
    mlflow.set_tags(tags)
    return tags
