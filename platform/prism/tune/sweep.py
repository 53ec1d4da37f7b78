"""``prism tune JOB --space SPACE``: a Ray Tune search whose trials are ``prism train`` runs.

:func:`run_sweep` does, in order:

1. Config. Job YAML → the space's ``overrides`` → command-line overrides → the sweep's metric/mode
   (written into ``train.metric``/``train.mode`` so checkpoints are kept and ranked on the metric the
   search optimises). The result is validated, then every searched key's values are applied to it and
   validated (:func:`prism.tune.space.validate_space`): a bad key fails here, before Ray or MLflow start.
   Relative paths become absolute and the tracking URI explicit, because trials run in other processes
   (and, on a cluster, other nodes) with another working directory.
2. Data. The Ray datasets are built once on the driver and handed to every trial with
   ``tune.with_parameters`` (CSV and image checks run once; each trial's Train run streams its own
   execution of the lazy plan). If the space searches a key that changes the datasets (``data.*``
   other than the loader settings, ``task.*``, ``backbone.img_size``/``name``), each trial builds its own.
3. Search. ``ray.tune.Tuner`` over :func:`prism.tune.trial.run_trial` (``tune.with_resources`` with the
   sweep's ``trial_resources``, no CPU by default: the trial only drives a Train run whose workers
   request their own resources), ``BasicVariantGenerator`` (seeded, ``max_concurrent_trials``) and ``ASHAScheduler`` on the
   reported ``epoch``. Trials are MLflow child runs of the sweep's run.
4. Results. The table (:mod:`prism.tune.results`) printed and saved as ``results.csv``, the plot
   (:mod:`prism.tune.plots`) as ``metric_vs_params.png``, both in the sweep folder
   (``<train.storage_path>/tune-<experiment>-<run id>``; ``./tune-…`` when the storage is a URI) and
   logged to the sweep's run under ``tune/``.
5. Registry. The best trial's best checkpoint becomes a new version of ``tracking.model_name`` (logged in
   that trial's run) and gets the alias ``sweep.alias`` (``candidate``); ``champion`` is never moved.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from prism.config import JobConfig, apply_overrides, load_config
from prism.tune.space import SearchSpace, apply_values, data_keys, load_space, validate_space

__all__ = ["SweepOutcome", "run_sweep", "sweep_config"]

TABLE_COLUMNS_HIDDEN = ("checkpoint", "error")


@dataclass
class SweepOutcome:
    """What a finished sweep produced."""

    parent_run_id: str
    sweep_dir: Path
    metric: str
    mode: str
    table: pd.DataFrame
    results_csv: Path
    plot: Path
    best: dict[str, Any]
    model_version: str | None = None
    alias: str | None = None


def sweep_config(job: str | Path, space: SearchSpace, overrides: list[str] | None = None) -> JobConfig:
    """The base job of every trial: job file + space overrides + CLI overrides + sweep metric/mode."""
    from prism.config.schema import ConfigError

    raw = load_config(job).model_dump(mode="json")
    try:
        raw = apply_values(raw, space.overrides.items())
        load_config(raw=raw)
    except ConfigError as e:
        raise ConfigError(f"{space.source}: overrides do not make a valid job config:\n{e}") from None
    raw = apply_overrides(raw, list(overrides or []))
    s = space.sweep
    raw = apply_values(raw, [(k, v) for k, v in (("train.metric", s.metric), ("train.mode", s.mode)) if v])
    cfg = load_config(raw=raw, path=str(job))
    if s.alias == cfg.tracking.alias:
        raise ConfigError(f"{space.source}: sweep.alias '{s.alias}' is the job's tracking.alias; a sweep only "
                          "proposes a candidate (default alias 'candidate'): compare it, then move "
                          f"'{s.alias}' deliberately with prism.tracking.set_alias")
    return cfg


def _absolute(cfg: JobConfig, tracking_uri: str) -> dict[str, Any]:
    """``cfg`` as a mapping with every local path absolute and the tracking URI explicit (trials run elsewhere)."""
    raw = cfg.model_dump(mode="json")
    for section, key in (("train", "storage_path"), ("train", "resume_from"), ("data", "root"),
                         ("data", "labels"), ("backbone", "weights")):
        value = raw[section][key]
        if value is not None and "://" not in str(value):
            raw[section][key] = str(Path(value).resolve())
    raw["data"]["synthetic"]["cache_dir"] = str(Path(raw["data"]["synthetic"]["cache_dir"]).resolve())
    raw["tracking"]["tracking_uri"] = tracking_uri
    return raw


def _checkpoint(path: str, storage: str):
    """The Train checkpoint at ``path`` as Tune reported it (a path inside ``storage``'s filesystem)."""
    from ray.train import Checkpoint

    if "://" not in storage:
        return Checkpoint(path)
    import pyarrow.fs

    return Checkpoint(path, filesystem=pyarrow.fs.FileSystem.from_uri(storage)[0])


def _warn_if_no_cpu_left(cfg: JobConfig, space: SearchSpace) -> None:
    """Concurrent Train workers that take every CPU leave none for Ray Data decoding: the sweep would hang."""
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    s = space.sweep
    need = s.max_concurrent_trials * (cfg.train.num_workers * cfg.train.cpus_per_worker
                                      + s.trial_resources.get("CPU", 0.0))
    if total and total - need < 1:
        print(f"[prism] warning: {s.max_concurrent_trials} concurrent trial(s) × {cfg.train.num_workers} worker(s) "
              f"× {cfg.train.cpus_per_worker} CPU use {need:g} of the cluster's {total:g} CPUs, leaving "
              "less than 1 CPU for Ray Data decoding; lower sweep.max_concurrent_trials or "
              "train.cpus_per_worker if trials wait forever", flush=True)


def _scheduler(space: SearchSpace, longest_plan: int):
    """``ASHAScheduler`` over reported epochs, or None (FIFO) when ``sweep.asha`` is null."""
    from ray.tune.schedulers import ASHAScheduler

    a = space.sweep.asha
    if a is None:
        return None
    max_t = a.max_t or longest_plan
    # A trial reaching max_t is stopped by ASHA; only ask for that when max_t cuts plans short, so trials
    # that survive every rung finish their plan (and close their MLflow run) themselves.
    return ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=min(a.grace_period, max_t),
                         reduction_factor=a.reduction_factor, stop_last_trials=max_t < longest_plan)


def _tuner(space: SearchSpace, base: dict[str, Any], cfg: JobConfig, parent_run_id: str, data: Any,
           sweep_name: str, storage: str, longest_plan: int):
    """The ``ray.tune.Tuner``: trials of :func:`~prism.tune.trial.run_trial` over the space's dimensions."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from prism.tune.trial import run_trial, trial_dirname

    s = space.sweep
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, keys=space.keys, parent_run_id=parent_run_id, data=data),
        dict(s.trial_resources))
    return tune.Tuner(
        trainable,
        param_space={d.key: d.to_tune() for d in space.dimensions},
        tune_config=tune.TuneConfig(
            metric=cfg.train.metric, mode=cfg.train.mode, num_samples=s.num_samples,
            scheduler=_scheduler(space, longest_plan),
            search_alg=BasicVariantGenerator(random_state=s.seed, max_concurrent=s.max_concurrent_trials),
            trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=sweep_name, storage_path=storage, verbose=1),
    )


def _register_best(best: dict[str, Any], cfg: JobConfig, storage: str, alias: str, parent_run_id: str) -> str:
    """Register the best checkpoint as a new version (logged in the best trial's run) and set ``alias``."""
    from prism.inference.bundle import stage_bundle
    from prism.inference.publish import register_bundle
    from prism.tracking import set_alias
    from prism.tune.results import best_column

    name, metric = cfg.tracking.model_name, cfg.train.metric
    with tempfile.TemporaryDirectory() as tmp, _checkpoint(best["checkpoint"], storage).as_directory() as d:
        bundle = stage_bundle(Path(d), Path(tmp) / "bundle")
        fingerprint = json.loads((bundle / "metrics.json").read_text()).get("val_fingerprint")
        mv = register_bundle(bundle, name, run_id=best["mlflow_run_id"], metric=metric,
                             value=best[best_column(metric)], mode=cfg.train.mode, val_fingerprint=fingerprint)
    set_alias(name, alias, mv.version)
    client = mlflow.MlflowClient()
    client.set_model_version_tag(name, str(mv.version), "prism.tune.parent_run_id", parent_run_id)
    client.set_tag(parent_run_id, "prism.tune.model_version", str(mv.version))
    return str(mv.version)


def _log_sweep_start(base: dict[str, Any], space: SearchSpace, space_path: str | Path, per_trial: list[str]) -> None:
    """Into the active (parent) run: the trials' base config, the space file and the sweep settings."""
    from prism.tracking import flatten_params, log_resolved_config

    log_resolved_config(base)
    mlflow.log_text(Path(space_path).read_text(), "tune/space.yaml")
    mlflow.log_params(flatten_params({"tune": {**space.sweep.model_dump(mode="json"), "keys": space.keys,
                                               "data": "per_trial" if per_trial else "shared"}}))


def _write_results(grid: Any, space: SearchSpace, cfg: JobConfig, experiment_id: str, parent_run_id: str,
                   out_dir: Path) -> tuple[pd.DataFrame, Path, Path]:
    """Results table (child runs closed), CSV and plot in ``out_dir`` and under ``tune/`` of the active run."""
    from prism.tune.plots import plot_metric_vs_params
    from prism.tune.results import best_column, collect_trials, finish_child_runs, trial_table
    from prism.tune.trial import TRIAL_TAG

    metric, mode = cfg.train.metric, cfg.train.mode
    rows = collect_trials(grid, space.keys, metric, mode)
    finish_child_runs(rows, experiment_id, parent_run_id, metric, TRIAL_TAG)
    table = trial_table(rows, space.keys, metric, mode)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, png = out_dir / "results.csv", out_dir / "metric_vs_params.png"
    table.to_csv(csv, index=False)
    plot_metric_vs_params(table, space.keys, best_column(metric), metric,
                          log_keys=[d.key for d in space.dimensions if d.kind == "loguniform"]).savefig(png)
    mlflow.log_artifact(str(csv), "tune")
    mlflow.log_artifact(str(png), "tune")
    mlflow.log_metrics({f"tune/trials_{k}": float(v) for k, v in table["status"].value_counts().items()})
    return table, csv, png


def _best(table: pd.DataFrame, metric: str) -> dict[str, Any]:
    """The best row that finished with a value and a checkpoint; ``RuntimeError`` with the trials' errors if none."""
    from prism.tune.results import best_column

    ok = table[(table["status"] != "error") & table[best_column(metric)].map(math.isfinite)
               & table["checkpoint"].notna()]
    if ok.empty:
        errors = "\n".join(f"  trial {r.trial_id}: {r.error}" for r in table.itertuples() if r.error)
        raise RuntimeError(f"no trial reported {metric} with a checkpoint; see the trial logs above\n{errors}")
    return ok.iloc[0].to_dict()


def run_sweep(job: str | Path, space: str | Path, overrides: list[str] | None = None) -> SweepOutcome:
    """Run the search of ``space`` over ``job`` end to end (see the module docstring)."""
    from prism.engine.driver import resolve_img_size
    from prism.runtime.ray_cluster import ensure_ray
    from prism.tasks import build_task
    from prism.tracking import browse_command, configure_tracking, get_or_create_experiment
    from prism.tune.results import best_column

    sp = load_space(space)
    cfg = resolve_img_size(sweep_config(job, sp, overrides))
    longest_plan = validate_space(sp, cfg.model_dump(mode="json"))
    uri = configure_tracking(cfg.tracking.tracking_uri)
    base = _absolute(cfg, uri)
    metric = cfg.train.metric
    experiment_id = get_or_create_experiment(cfg.tracking.experiment, cfg.tracking.artifact_location)
    ensure_ray()
    _warn_if_no_cpu_left(cfg, sp)
    per_trial = data_keys(sp)
    data = None if per_trial else build_task(cfg).build_datasets(cfg.backbone.img_size)
    print(f"[prism] tune {', '.join(sp.keys)} on {metric} ({cfg.train.mode}); datasets "
          + (f"built per trial (the space searches {per_trial})" if per_trial
             else f"built once: {data.describe()}"), flush=True)

    tags = {"prism.tune": "sweep", "prism.backbone": cfg.backbone.name, "prism.job_file": str(job),
            "prism.tune.space": str(space)}
    with mlflow.start_run(experiment_id=experiment_id, tags=tags,
                          run_name=cfg.tracking.run_name or f"tune-{Path(space).stem}") as run:
        parent_run_id = run.info.run_id
        sweep_name = f"tune-{cfg.tracking.experiment}-{parent_run_id[:8]}"
        storage = base["train"]["storage_path"]
        sweep_dir = f"{storage.rstrip('/')}/{sweep_name}"  # Tune's trial-<id>/ and the Train runs train-<id>/
        base["train"]["storage_path"] = sweep_dir
        _log_sweep_start(base, sp, space, per_trial)
        grid = _tuner(sp, base, cfg, parent_run_id, data, sweep_name, storage, longest_plan).fit()
        out_dir = Path(sweep_dir) if "://" not in storage else Path.cwd() / sweep_name
        table, csv, png = _write_results(grid, sp, cfg, experiment_id, parent_run_id, out_dir)
        _print_table(table, metric)
        best = _best(table, metric)
        mlflow.log_metric(f"best/{metric}", best[best_column(metric)])
        mlflow.set_tags({"prism.tune.best_trial_id": best["trial_id"], "prism.tune.best_run_id": best["mlflow_run_id"]})

    outcome = SweepOutcome(parent_run_id, out_dir, metric, cfg.train.mode, table, csv, png, best)
    if cfg.tracking.model_name:
        outcome.model_version = _register_best(best, cfg, sweep_dir, sp.sweep.alias, parent_run_id)
        outcome.alias = sp.sweep.alias
    _print_summary(outcome, cfg, browse_command(uri))
    return outcome


def _print_table(table: pd.DataFrame, metric: str) -> None:
    shown = table.drop(columns=list(TABLE_COLUMNS_HIDDEN))
    shown["mlflow_run_id"] = shown["mlflow_run_id"].map(lambda r: r[:8] if isinstance(r, str) else r)
    print(f"[prism] trials (best {metric} first):\n{shown.to_string(index=False)}", flush=True)
    for r in table.itertuples():
        if r.error:
            print(f"[prism] trial {r.trial_id} failed: {r.error}", flush=True)


def _print_summary(o: SweepOutcome, cfg: JobConfig, browse: str) -> None:
    b = o.best
    from prism.tune.results import best_column

    lines = [f"[prism] best trial {b['trial_id']}: {o.metric} = {b[best_column(o.metric)]:.4f} at epoch "
             f"{b['best_epoch']} (MLflow run {b['mlflow_run_id']}, sweep run {o.parent_run_id})",
             f"[prism] results: {o.results_csv}  plot: {o.plot}"]
    if o.model_version:
        name = cfg.tracking.model_name
        lines.append(f"[prism] registered models:/{name}/{o.model_version} with alias '{o.alias}' "
                     f"('{cfg.tracking.alias}' unchanged)")
        lines.append(f"[prism] evaluate: prism evaluate --model models:/{name}@{o.alias}")
    else:
        lines.append(f"[prism] best checkpoint: {b['checkpoint']} (set tracking.model_name to register it)")
    lines.append(f"[prism] browse runs and models: {browse}")
    print("\n".join(lines), flush=True)
