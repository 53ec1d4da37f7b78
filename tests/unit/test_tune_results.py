"""The sweep's results table and plot, from hand-made Tune results (no Ray)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from prism.tune.plots import plot_metric_vs_params
from prism.tune.results import best_column, collect_trials, describe_value, trial_table

METRIC = "val/macro_f1"
KEYS = ["lora.rank", "stages"]
PLAN = [{"name": "probe", "kind": "probe", "epochs": 2}, {"kind": "lora", "epochs": 3}]


@dataclass
class FakeResult:
    """The parts of ``ray.tune.Result`` the table reads."""

    path: str
    config: dict
    metrics_dataframe: pd.DataFrame | None
    error: Exception | None = None
    metrics: dict = field(default_factory=dict)


def _epochs(tmp_path: Path, trial: str, values: list[float], kept: set[int]) -> pd.DataFrame:
    rows = []
    for i, v in enumerate(values, start=1):
        ckpt = tmp_path / trial / f"epoch_{i:04d}"
        if i in kept:  # Ray keeps only the best N checkpoints (+ the latest)
            ckpt.mkdir(parents=True)
        rows.append({"epoch": i, METRIC: v, "checkpoint_path": str(ckpt)})
    return pd.DataFrame(rows)


@pytest.fixture
def rows(tmp_path):
    grid = [
        FakeResult("/x/trial-a_00000", {"lora.rank": 4, "stages": PLAN},
                   _epochs(tmp_path, "a", [0.2, 0.5, 0.4], kept={2, 3}), metrics={"trial_id": "a_00000"}),
        FakeResult("/x/trial-a_00001", {"lora.rank": 8, "stages": PLAN},
                   _epochs(tmp_path, "b", [0.6, 0.7, 0.7], kept={3})),  # tie: the kept checkpoint wins
        FakeResult("/x/trial-a_00002", {"lora.rank": 16, "stages": PLAN}, _epochs(tmp_path, "c", [0.1], kept={1})),
        FakeResult("/x/trial-a_00003", {"lora.rank": 2, "stages": PLAN}, None, error=RuntimeError("boom")),
    ]
    out = collect_trials(grid, KEYS, METRIC, "max")
    for row, status in zip(out, ["completed", "completed", "stopped", "error"], strict=True):
        row["status"], row["mlflow_run_id"] = status, f"run-{row['trial_id']}"
    return out


def test_rows_hold_best_value_epoch_and_an_existing_checkpoint(rows):
    a, b, c, d = rows
    assert a["trial_id"] == "a_00000" and b["trial_id"] == "a_00001"  # from metrics, else the folder name
    assert (a[best_column(METRIC)], a["best_epoch"], a["epochs"]) == (0.5, 2, 3)
    assert a["checkpoint"].endswith("a/epoch_0002")
    assert (b[best_column(METRIC)], b["best_epoch"]) == (0.7, 3)
    assert b["checkpoint"].endswith("b/epoch_0003")
    assert (c["epochs"], c["stages"]) == (1, "probe:2+lora:3")
    assert math.isnan(d[best_column(METRIC)]) and d["epochs"] == 0 and "RuntimeError: boom" in d["error"]


@pytest.mark.parametrize(("mode", "order"), [("max", ["a_00001", "a_00000", "a_00002", "a_00003"]),
                                             ("min", ["a_00002", "a_00000", "a_00001", "a_00003"])])
def test_table_is_ordered_best_first_with_errors_last(rows, mode, order):
    table = trial_table(rows, KEYS, METRIC, mode)
    assert list(table["trial_id"]) == order
    assert list(table.columns[:5]) == ["trial_id", "lora.rank", "stages", best_column(METRIC), "best_epoch"]
    assert {"epochs", "status", "mlflow_run_id", "checkpoint"} <= set(table.columns)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(8, 8), (1e-3, 1e-3), ("attn", "attn"), (None, None), (PLAN, "probe:2+lora:3"),
     (["attn", "mlp"], '["attn","mlp"]'), ({"head": 1e-3}, '{"head":0.001}')],
)
def test_describe_value(value, shown):
    assert describe_value(value) == shown


def test_plot_has_one_panel_per_key_and_skips_missing_values(rows):
    table = trial_table(rows, KEYS, METRIC, "max")
    fig = plot_metric_vs_params(table, KEYS, best_column(METRIC), METRIC, log_keys=["lora.rank"])
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_xlabel() for ax in panels] == KEYS
    assert panels[0].get_xscale() == "log"
    assert [t.get_text() for t in panels[1].get_xticklabels()] == ["probe:2+lora:3"]
    assert sum(len(c.get_offsets()) for c in panels[0].collections) == 3  # the errored trial has no value
    assert "3 of 4 trials" in fig._suptitle.get_text()
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {"completed", "stopped"}


@pytest.fixture
def store(tmp_path):
    """A scratch SQLite MLflow store; global MLflow state reset after."""
    import mlflow

    from prism.tracking import configure_tracking, get_or_create_experiment

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", "unused")  # so the context restores it: MLflow exports the URI
        mp.setenv("MLFLOW_REGISTRY_URI", "unused")
        configure_tracking(f"sqlite:///{tmp_path}/mlflow.db")
        yield get_or_create_experiment("tune-results")
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def test_child_runs_are_closed_with_the_status_tune_implies(store):
    """Tune ends a stopped trial with its Train run inside: its run is left RUNNING or FAILED (timing)."""
    from mlflow import MlflowClient

    from prism.tune.results import STATUS_TAG, finish_child_runs

    client = MlflowClient()
    parent = client.create_run(store).info.run_id
    left = {"done": "FINISHED", "killed": "RUNNING", "raised": "FAILED", "crashed": "RUNNING", "broke": "FAILED"}
    runs = {}
    for trial, status in left.items():
        runs[trial] = client.create_run(store, tags={"mlflow.parentRunId": parent, "trial": trial}).info.run_id
        if status != "RUNNING":
            client.set_terminated(runs[trial], status)
    errors = {"crashed", "broke"}  # Tune recorded an error for these
    rows = [{"trial_id": t, best_column(METRIC): 0.5, "status": "error" if t in errors else ""}
            for t in [*left, "never-started"]]
    finish_child_runs(rows, store, parent, METRIC, trial_tag="trial")
    got = {r["trial_id"]: r["status"] for r in rows}
    assert got == {"done": "completed", "killed": "stopped", "raised": "stopped", "crashed": "error",
                   "broke": "error", "never-started": "error"}
    for trial, expected in {"done": "FINISHED", "killed": "FINISHED", "raised": "FINISHED", "crashed": "FAILED",
                            "broke": "FAILED"}.items():
        run = client.get_run(runs[trial])
        assert (run.info.status, run.data.tags[STATUS_TAG]) == (expected, got[trial])
    assert client.get_run(runs["killed"]).data.metrics[f"best/{METRIC}"] == 0.5
    assert f"best/{METRIC}" not in client.get_run(runs["done"]).data.metrics  # run_training logged its own
