"""A 2-trial Ray Tune sweep end to end on a local Ray (2 CPUs): Tune → Train → MLflow child runs → registry.

The quick space (2 grid points, 3-epoch plan on 90 small synthetic images) runs once for the module. A
weak "champion" registered before the sweep must keep its alias: a sweep only proposes a ``candidate``.
"""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from tests.conftest import CIRCLES_JOB, ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow]

QUICK_SPACE = ROOT / "tune_spaces" / "quick.yaml"
METRIC = "val/macro_f1"


@pytest.fixture(scope="module")
def sweep(ray_local, workdir):
    from prism.inference.publish import register_bundle
    from prism.tracking import configure_tracking, get_or_create_experiment, set_alias
    from prism.tune import run_sweep

    configure_tracking()
    with mlflow.start_run(experiment_id=get_or_create_experiment("tune")) as run:
        old = workdir / "old_bundle"
        old.mkdir()
        (old / "metrics.json").write_text(json.dumps({"metrics": {METRIC: 0.0}}))
    register_bundle(old, "circles", run_id=run.info.run_id, metric=METRIC, value=0.0, mode="max")
    set_alias("circles", "champion", 1)

    outcome = run_sweep(CIRCLES_JOB, QUICK_SPACE,
                        ["tracking.experiment=tune", "train.storage_path=" + str(workdir / "runs")])
    return outcome


def _children(parent_run_id: str):
    exp = mlflow.MlflowClient().get_experiment_by_name("tune")
    return mlflow.MlflowClient().search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")


def test_every_trial_is_a_closed_child_run_with_live_epochs(sweep):
    from prism.tune.trial import TRIAL_TAG

    children = _children(sweep.parent_run_id)
    assert len(children) == 2
    client = mlflow.MlflowClient()
    table = sweep.table.set_index("trial_id")
    for run in children:
        assert run.info.status == "FINISHED", run.info
        trial = run.data.tags[TRIAL_TAG]
        row = table.loc[trial]
        assert run.data.tags["prism.tune.status"] == row["status"]
        epochs = [m.step for m in client.get_metric_history(run.info.run_id, METRIC)]
        assert epochs == list(range(1, row["epochs"] + 1))  # logged live, epoch by epoch
        assert run.data.metrics[f"best/{METRIC}"] == pytest.approx(row[f"best_{METRIC}"])


def test_csv_has_one_row_per_trial_and_asha_bookkeeping(sweep):
    csv = pd.read_csv(sweep.results_csv)
    assert len(csv) == 2
    assert {"trial_id", "stages.0.lr.head", "lora.rank", f"best_{METRIC}", "epochs", "status"} <= set(csv.columns)
    assert sorted(csv["stages.0.lr.head"]) == pytest.approx([1e-5, 3e-3])
    assert set(csv["status"]) <= {"completed", "stopped"}
    for row in csv.itertuples():  # stopped trials ended at a rung, completed ones ran the 3-epoch plan
        assert (row.epochs == 3) == (row.status == "completed"), csv
    assert list(csv[f"best_{METRIC}"]) == sorted(csv[f"best_{METRIC}"], reverse=True)


def test_parent_run_has_table_plot_and_best(sweep):
    client = mlflow.MlflowClient()
    parent = client.get_run(sweep.parent_run_id)
    assert parent.info.status == "FINISHED"
    arts = {a.path for a in client.list_artifacts(sweep.parent_run_id, "tune")}
    assert {"tune/results.csv", "tune/metric_vs_params.png", "tune/space.yaml"} <= arts
    assert parent.data.metrics[f"best/{METRIC}"] == pytest.approx(sweep.table[f"best_{METRIC}"].max())
    assert sweep.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_best_trial_registered_as_candidate_and_champion_untouched(sweep):
    client = mlflow.MlflowClient()
    best = sweep.table.iloc[0]
    assert best[f"best_{METRIC}"] == sweep.table[f"best_{METRIC}"].max()
    candidate = client.get_model_version_by_alias("circles", "candidate")
    assert str(candidate.version) == sweep.model_version == "2"
    assert candidate.run_id == best["mlflow_run_id"]
    assert float(candidate.tags["prism.metric_value"]) == pytest.approx(best[f"best_{METRIC}"])
    assert str(client.get_model_version_by_alias("circles", "champion").version) == "1"


def test_candidate_loads_as_a_predictor(sweep):
    from prism.inference.predictor import load_predictor

    pred = load_predictor("models:/circles@candidate")
    best = sweep.table.iloc[0]  # the candidate is the best trial's config, not the base job's
    assert pred.cfg.backbone.img_size == 64
    assert pred.cfg.lora.rank == int(best["lora.rank"])
    assert pred.cfg.stages[0].lr["head"] == pytest.approx(float(best["stages.0.lr.head"]))
