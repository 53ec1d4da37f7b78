"""An evaluation as an MLflow run: ``prism evaluate`` logs its metrics and every file it wrote (figures,
tables, ``report.md``) into the model's experiment, so a model's scores on other data sit beside its
training runs in ``mlflow ui``.

The run is tagged ``prism.kind=evaluation`` and ``prism.model=<model URI>``; metrics are ``eval/<name>``;
what was scored is in the params (``scored.*``); the files are under the artifact folder ``evaluation/``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow

from prism.tracking.store import configure_tracking, get_or_create_experiment

__all__ = ["log_evaluation"]


def log_evaluation(out_dir: Path, metrics: Mapping[str, float], model_uri: str, experiment: str,
                   scored: Mapping[str, Any], tracking_uri: str | None = None) -> str:
    """Log one evaluation run (see the module docstring); returns its run id. Non-finite metrics are left
    out (MLflow cannot plot them); ``tracking_uri`` as :func:`~prism.tracking.store.configure_tracking`."""
    configure_tracking(tracking_uri)
    experiment_id = get_or_create_experiment(experiment)
    tags = {"prism.kind": "evaluation", "prism.model": str(model_uri)}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"evaluate {model_uri}", tags=tags) as run:
        mlflow.log_params({f"scored.{k}": str(v)[:500] for k, v in scored.items() if k != "describe"})
        mlflow.log_metrics({f"eval/{k}": float(v) for k, v in metrics.items()
                            if isinstance(v, (int, float)) and math.isfinite(v)})
        mlflow.log_artifacts(str(out_dir), "evaluation")
    return run.info.run_id
