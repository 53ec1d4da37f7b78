"""One Tune trial = one ``prism train`` run of the sampled config, reporting each epoch to Tune.

:func:`run_trial` is the function trainable the sweep hands to ``ray.tune.Tuner`` (wrapped in
``tune.with_parameters`` for the job mapping and the shared datasets, and ``tune.with_resources``). It
acts as the Ray Train driver, as Ray's Train V2 + Tune guide describes: it applies the sampled values to
the job, then calls :func:`prism.engine.driver.run_training`, the same function ``prism train`` runs (same
``build_trainer``, same ``train_loop_per_worker``, same live MLflow epoch logger), with

- ``TuneReportCallback`` added to the TorchTrainer's ``RunConfig`` callbacks: each ``ray.train.report``
  of rank 0 (metrics + ``checkpoint_path``) is forwarded to Tune, so ASHA sees every epoch;
- the MLflow run started as a child of the sweep's run (tag ``mlflow.parentRunId``) and tagged with the
  trial id (:data:`TRIAL_TAG`);
- registration off: the sweep registers only the best trial's best checkpoint.

When ASHA stops a trial, Tune ends this function's actor with the Train run inside it; the sweep then
closes that trial's MLflow run (see :func:`prism.tune.results.finish_child_runs`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prism.config import load_config
from prism.tune.space import apply_values

if TYPE_CHECKING:
    from prism.data.datasets import TrainData

__all__ = ["TRIAL_TAG", "trial_dirname", "run_trial"]

TRIAL_TAG = "prism.tune.trial_id"


def trial_dirname(trial: Any) -> str:
    """Tune trial folder name: ``trial-<trial id>`` (the Train run of that trial is ``train-<trial id>``)."""
    return f"trial-{trial.trial_id}"


def run_trial(config: dict[str, Any], *, base: dict[str, Any], keys: list[str], parent_run_id: str,
              data: TrainData | None = None) -> None:
    """Train the job ``base`` with the sampled ``config`` (``{dotted key: value}``) applied in ``keys`` order.

    ``base`` is the sweep's resolved job mapping (absolute paths, the sweep's tracking URI); ``data`` the
    datasets built once by the sweep, or None when the space searches keys that change them (then this
    trial builds its own from its config).
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from prism.engine.driver import run_training

    trial_id = tune.get_context().get_trial_id()
    raw = apply_values(base, [(k, config[k]) for k in keys])
    raw["tracking"]["run_name"] = f"trial-{trial_id}"
    cfg = load_config(raw=raw)
    run_training(cfg, parent_run_id=parent_run_id, register=False, extra_callbacks=[TuneReportCallback()],
                 run_name=f"train-{trial_id}", run_tags={TRIAL_TAG: trial_id}, data=data)
