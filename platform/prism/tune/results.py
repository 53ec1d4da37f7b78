"""The sweep's results table: one row per trial, read from Tune's ``ResultGrid`` and the trials' MLflow runs.

Columns: ``trial_id``, one column per searched key (the sampled value; stage plans as
``probe:2+lora:3``), ``best_<metric>`` (best value over the trial's epochs), ``best_epoch``, ``epochs``
(epochs run), ``status`` (``completed``; ``stopped`` = ended early by the scheduler; ``error``),
``mlflow_run_id`` and ``checkpoint`` (the Train checkpoint holding the best value). Rows are ordered
best first.

A trial that ASHA stops is ended by Tune together with the Train run inside it, so ``run_training`` never
finishes its MLflow run: depending on timing the run is left ``RUNNING`` (the thread died) or ``FAILED``
(``fit()`` raised as its Train controller went away). A trial that fails by itself carries a Tune error;
so a child run that did not finish, of a trial without an error, was stopped by the scheduler.
:func:`finish_child_runs` logs its ``best/<metric>``, tags it ``stopped`` and closes it as FINISHED.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["STATUS_TAG", "best_column", "collect_trials", "describe_value", "finish_child_runs", "trial_table"]

STATUS_TAG = "prism.tune.status"


def best_column(metric: str) -> str:
    """Name of the table column holding each trial's best ``metric`` (``best_val/macro_f1``)."""
    return f"best_{metric}"


def describe_value(value: Any) -> Any:
    """A short, readable form of a sampled value: numbers and strings as they are, stage plans as
    ``name:epochs+…``, anything else compact JSON."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list) and value and all(isinstance(s, dict) and "kind" in s for s in value):
        return "+".join(f"{s.get('name') or s['kind']}:{s.get('epochs', '?')}" for s in value)
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _trial_id(result: Any) -> str:
    return str(result.metrics.get("trial_id") or Path(result.path).name.removeprefix("trial-"))


def _best_row(df: pd.DataFrame | None, metric: str, mode: str) -> pd.Series | None:
    """The best epoch whose checkpoint still exists (Ray keeps only the best N), else the best epoch."""
    if df is None or metric not in df or not df[metric].notna().any():
        return None
    ranked = df[df[metric].notna()].sort_values([metric, "epoch"], ascending=[mode == "min", False])
    if "checkpoint_path" in ranked:
        for _, row in ranked.iterrows():
            if isinstance(row["checkpoint_path"], str) and Path(row["checkpoint_path"]).is_dir():
                return row
    return ranked.iloc[0]


def collect_trials(grid: Any, keys: list[str], metric: str, mode: str) -> list[dict[str, Any]]:
    """One dict per trial of the Tune ``ResultGrid``: sampled values, best value/epoch/checkpoint, error."""
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        best = _best_row(df, metric, mode)
        row: dict[str, Any] = {"trial_id": _trial_id(result)}
        row.update({k: describe_value(result.config.get(k)) for k in keys})
        row[best_column(metric)] = math.nan if best is None else float(best[metric])
        row["best_epoch"] = None if best is None else int(best["epoch"])
        row["epochs"] = 0 if df is None or "epoch" not in df or df.empty else int(df["epoch"].max())
        row["status"] = "error" if result.error else ""
        row["checkpoint"] = None if best is None else best.get("checkpoint_path")
        row["error"] = "" if result.error is None else f"{type(result.error).__name__}: {result.error}"
        rows.append(row)
    return rows


def finish_child_runs(rows: list[dict[str, Any]], experiment_id: str, parent_run_id: str, metric: str,
                      trial_tag: str) -> None:
    """Match each row to its MLflow child run (by ``trial_tag``), set ``status`` and close runs Tune ended.

    ``completed``: the run finished. ``error``: Tune recorded an error for the trial (a crash that left the
    run RUNNING is closed as FAILED). ``stopped``: no error but the run did not finish (see the module
    docstring); it gets ``best/<metric>`` from the Tune results and is closed as FINISHED. Every child gets
    the tag :data:`STATUS_TAG`.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                  max_results=50_000)
    by_trial = {r.data.tags.get(trial_tag): r for r in children}
    for row in rows:
        run = by_trial.get(row["trial_id"])
        row["mlflow_run_id"] = None if run is None else run.info.run_id
        if run is None:
            row["status"] = row["status"] or "error"  # ended before its MLflow run started
            continue
        finished = run.info.status == "FINISHED"
        if row["status"] != "error":
            row["status"] = "completed" if finished else "stopped"
        if row["status"] == "stopped":
            value = row[best_column(metric)]
            if math.isfinite(value):
                client.log_metric(run.info.run_id, f"best/{metric}", value)
            client.set_terminated(run.info.run_id, "FINISHED")
        elif row["status"] == "error" and run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "FAILED")
        client.set_tag(run.info.run_id, STATUS_TAG, row["status"])


def trial_table(rows: list[dict[str, Any]], keys: list[str], metric: str, mode: str) -> pd.DataFrame:
    """The results table (columns in the module docstring), best trial first, errors last."""
    columns = ["trial_id", *keys, best_column(metric), "best_epoch", "epochs", "status", "mlflow_run_id",
               "checkpoint", "error"]
    table = pd.DataFrame(rows, columns=columns)
    table = table.sort_values(best_column(metric), ascending=mode == "min", na_position="last", kind="stable")
    table["best_epoch"] = table["best_epoch"].astype("Int64")
    return table.reset_index(drop=True)
