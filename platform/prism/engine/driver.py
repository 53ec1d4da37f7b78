"""The TorchTrainer driver: data → Ray Train → MLflow run → registered model version.

``run_training(cfg)`` is what ``prism train`` calls (directly, or inside ``ray job submit``): it validates
and splits the data, builds a :class:`ray.train.torch.TorchTrainer` around
:func:`prism.engine.loop.train_loop_per_worker`, logs everything to one MLflow run, and registers the best
checkpoint as a new model version, moving the ``champion`` alias only when the new version is better.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
from ray.train.torch import TorchTrainer

from prism.config import JobConfig
from prism.config.schema import ConfigError
from prism.engine.callbacks import MlflowEpochLogger
from prism.engine.failures import StopOnDataErrors, data_error
from prism.engine.loop import train_loop_per_worker
from prism.engine.model import check_plan
from prism.inference.bundle import stage_bundle
from prism.runtime.console import train_logging_config, verbose
from prism.runtime.ray_cluster import ensure_ray

if TYPE_CHECKING:
    from prism.data.datasets import TrainData

__all__ = ["TrainOutcome", "build_trainer", "check_metric", "resolve_img_size", "run_training"]

log = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    """What a finished training job produced."""

    run_id: str
    best_metric: float
    metric: str
    best_checkpoint: Path
    history: list[dict[str, float]]
    model_version: str | None = None
    promoted: bool = False
    best_checkpoint_uri: str = ""
    """Where the best checkpoint is, as a URI for remote storage (``s3://…``); the path for local storage."""


def checkpoint_uri(checkpoint) -> str:
    """A Ray Train ``Checkpoint``'s location: ``s3://bucket/…`` / ``gs://…`` on remote storage (whose
    ``checkpoint.path`` has no scheme), the plain path on local disk."""
    kind = getattr(getattr(checkpoint, "filesystem", None), "type_name", "local")
    scheme = {"local": "", "gcs": "gs"}.get(kind, kind)
    return f"{scheme}://{checkpoint.path}" if scheme else str(checkpoint.path)


def resolve_img_size(cfg: JobConfig) -> JobConfig:
    """Fill ``backbone.img_size`` with the backbone's default (built on the meta device: no memory)."""
    if cfg.backbone.img_size is not None:
        return cfg
    import torch

    from prism.backbones import create_backbone

    with torch.device("meta"):
        bb = create_backbone(cfg.backbone.name, pretrained=False, img_size=None)
    return cfg.model_copy(update={"backbone": cfg.backbone.model_copy(update={"img_size": bb.img_size})})


LOOP_METRICS = ("epoch", "epoch_time_s", "train/loss", "train/images_per_s", "val/loss")
"""Keys the loop reports besides the task's ``val/*`` metrics (and ``lr/<group>``)."""


def check_metric(cfg: JobConfig, task) -> None:
    """Refuse an unknown ``train.metric`` before any training (it is first reported after an epoch)."""
    known = {*LOOP_METRICS, *task.metrics().compute("val/")}
    if cfg.train.metric not in known:
        import difflib

        close = difflib.get_close_matches(cfg.train.metric, sorted(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"train.metric: '{cfg.train.metric}' is not reported{hint}; choose one of {sorted(known)}")


def build_trainer(cfg: JobConfig, datasets: dict, *, callbacks: list | None = None,
                  run_name: str | None = None, resume_from: str | None = None,
                  val_fingerprint: str | None = None) -> TorchTrainer:
    """The TorchTrainer for ``cfg`` (also what a Tune trial runs).

    A lost worker (or node) costs a restart of the worker group from the latest reported checkpoint,
    ``train.max_failures`` times: :func:`~prism.engine.loop.train_loop_per_worker` resumes from
    ``ray.train.get_checkpoint()``. The workers are placed by ``train.placement_strategy`` (the worker
    group's placement group strategy).
    """
    t = cfg.train
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": cfg.model_dump(mode="json"),
                           "resume_from": None if resume_from is None else str(Path(resume_from).resolve()),
                           "val_fingerprint": val_fingerprint, "verbose": verbose()},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker},
                                     placement_strategy=t.placement_strategy),
        datasets=datasets,
        run_config=RunConfig(
            name=run_name,
            storage_path=t.storage_path if "://" in t.storage_path else str(Path(t.storage_path).resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=t.checkpoints_to_keep,
                                               checkpoint_score_attribute=t.metric,
                                               checkpoint_score_order=t.mode),
            failure_config=FailureConfig(max_failures=t.max_failures),
            callbacks=callbacks or [],
            logging_config=train_logging_config(),
        ),
    )


def _read_checkpoint_json(checkpoint, name: str) -> dict:
    with checkpoint.as_directory() as d:
        return json.loads((Path(d) / name).read_text())


def _log_streamed_skips(data) -> None:
    """Samples dropped while streaming shards (``on_bad_rows: skip``): ``data/skipped_samples`` (metric) and
    ``data/skipped_samples.csv`` (shard, key, reason)."""
    if data.ledger is None:
        return
    table = data.skipped_while_streaming()
    mlflow.log_metric("data/skipped_samples", len(table))
    if len(table):
        mlflow.log_text(table.to_csv(index=False), "data/skipped_samples.csv")
        print(f"[prism] {len(table)} bad sample(s) skipped while streaming, see data/skipped_samples.csv", flush=True)


def run_training(cfg: JobConfig, job_file: str | None = None, *, parent_run_id: str | None = None,
                 register: bool = True, extra_callbacks: list | None = None, run_name: str | None = None,
                 run_tags: dict[str, str] | None = None, data: TrainData | None = None) -> TrainOutcome:
    """Train ``cfg`` end to end and return where the results went (see the module docstring).

    The keyword-only arguments let a Ray Tune trial run this same path (:mod:`prism.tune`); their
    defaults are what ``prism train`` does:

    - ``parent_run_id``: start the MLflow run as a child of that run (tag ``mlflow.parentRunId``).
    - ``register``: register the best checkpoint when ``tracking.model_name`` is set (False: never).
    - ``extra_callbacks``: Ray Train ``UserCallback`` objects added after the MLflow epoch logger
      (e.g. Tune's ``TuneReportCallback``).
    - ``run_name``: Ray Train run name (folder under ``train.storage_path``); default
      ``<experiment>-<MLflow run id[:8]>``.
    - ``run_tags``: extra tags of the MLflow run.
    - ``data``: datasets already built from this config's data section (skips ``task.build_datasets``).
    """
    from prism.inference.publish import register_bundle
    from prism.tasks import build_task
    from prism.tracking import (
        browse_command,
        configure_tracking,
        get_or_create_experiment,
        log_figure,
        log_history_plots,
        log_resolved_config,
        promote_if_better,
        tag_stages,
    )

    cfg = resolve_img_size(cfg)
    uri = configure_tracking(cfg.tracking.tracking_uri)
    experiment_id = get_or_create_experiment(cfg.tracking.experiment, cfg.tracking.artifact_location)
    task = build_task(cfg)
    check_metric(cfg, task)
    try:
        check_plan(cfg, task)
    except ValueError as exc:
        raise ConfigError(f"stages: {exc}") from None
    with mlflow.start_run(experiment_id=experiment_id, run_name=cfg.tracking.run_name,
                          parent_run_id=parent_run_id) as run:
        run_id = run.info.run_id
        log_resolved_config(cfg.model_dump(mode="json"))
        tag_stages([s.model_dump(mode="json") for s in cfg.stages])
        mlflow.set_tags({"prism.task": task.name, "prism.backbone": cfg.backbone.name,
                         "prism.job_file": job_file or "", **(run_tags or {})})
        if data is None:
            data = task.build_datasets(cfg.backbone.img_size)  # validates the table before starting Ray
        ensure_ray()
        mlflow.log_params({"data.n_train": data.n_train, "data.n_val": data.n_val,
                           "data.labels_csv": str(data.labels_csv), "data.summary": data.describe()})
        mlflow.log_metric("data/skipped_rows", len(data.skipped))
        if len(data.skipped):
            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp) / "skipped_rows.csv"
                data.skipped.to_csv(p, index=False)
                mlflow.log_artifact(str(p), artifact_path="data")
        print(f"[prism] data: {data.describe()}"
              + (f" ({len(data.skipped)} bad rows skipped, see data/skipped_rows.csv)" if len(data.skipped) else ""),
              flush=True)

        trainer = build_trainer(cfg, {"train": data.train, "val": data.val},
                                callbacks=[MlflowEpochLogger(uri, run_id), *(extra_callbacks or []), StopOnDataErrors()],
                                run_name=run_name or f"{cfg.tracking.experiment}-{run_id[:8]}",
                                resume_from=None if cfg.train.resume_from is None else str(cfg.train.resume_from),
                                val_fingerprint=data.val_fingerprint)
        try:
            result = trainer.fit()
        except TrainingFailedError as exc:  # bad data: its own message, not three wrapped tracebacks
            error = data_error(exc)
            if error is None:
                raise
            raise error from None
        _log_streamed_skips(data)
        best = result.get_best_checkpoint(metric=cfg.train.metric, mode=cfg.train.mode)
        if best is None:
            raise RuntimeError("training finished without a checkpoint; see the worker logs above")
        best_info = _read_checkpoint_json(best, "metrics.json")
        latest = result.checkpoint or best
        history = _read_checkpoint_json(latest, "state.json")["history"]
        best_value = float(best_info["metrics"][cfg.train.metric])
        mlflow.log_metric(f"best/{cfg.train.metric}", best_value)
        log_history_plots(history, [cfg.train.metric, *type(cfg.task).summary_metrics])
        stats = best_info.get("stats", {})
        for path, fig in task.figures(stats).items():
            log_figure(fig, path)
        for path, table in task.tables(stats).items():
            mlflow.log_text(table.to_csv(index=False), path)

        outcome = TrainOutcome(run_id, best_value, cfg.train.metric, Path(best.path), history,
                               best_checkpoint_uri=checkpoint_uri(best))
        if register and cfg.tracking.model_name:
            with tempfile.TemporaryDirectory() as tmp, best.as_directory() as d:
                bundle = stage_bundle(Path(d), Path(tmp) / "bundle")
                mv = register_bundle(bundle, cfg.tracking.model_name, run_id=run_id, metric=cfg.train.metric,
                                     value=best_value, mode=cfg.train.mode, val_fingerprint=data.val_fingerprint)
            outcome.model_version = str(mv.version)
            outcome.promoted = promote_if_better(cfg.tracking.model_name, mv.version, alias=cfg.tracking.alias)
    _print_summary(cfg, outcome, browse_command(uri))
    return outcome


def _print_summary(cfg: JobConfig, o: TrainOutcome, browse: str) -> None:
    best = next((h for h in o.history if h.get(o.metric) == o.best_metric), {})
    heads = "  ".join(f"{k.removeprefix('val/')} {v:.3f}" for k, v in best.items()
                      if k.startswith("val/") and k.endswith("/accuracy") and k.count("/") == 2)
    lines = [f"[prism] best {o.metric} = {o.best_metric:.4f} at epoch {int(best.get('epoch', 0))}  "
             f"(MLflow run {o.run_id})"]
    if heads:
        lines.append(f"[prism] held-out accuracy at that epoch: {heads}")
    lines.append(f"[prism] best checkpoint: {o.best_checkpoint_uri or o.best_checkpoint}")
    if o.model_version:
        alias = cfg.tracking.alias
        moved = f"alias '{alias}' moved to it" if o.promoted else f"alias '{alias}' kept (not better)"
        lines.append(f"[prism] registered models:/{cfg.tracking.model_name}/{o.model_version} — {moved}")
        lines.append(f"[prism] predict: prism predict --model models:/{cfg.tracking.model_name}@{alias} IMAGES…")
    lines.append(f"[prism] browse runs and models: {browse}")
    print("\n".join(lines), flush=True)
