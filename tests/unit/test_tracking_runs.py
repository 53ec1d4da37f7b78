"""prism.tracking.runs and plots: params, the resolved config, per-epoch metrics, stage tags, curves."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import mlflow
import mlflow.artifacts
import pytest
import yaml
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from prism.tracking import (
    flatten_params,
    log_epoch,
    log_figure,
    log_history_plots,
    log_resolved_config,
    tag_stages,
)
from prism.tracking.plots import stage_spans

# MLflow's own SQLAlchemy store triggers this at start-up; nothing in prism can change it.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        ({"a": 1}, {"a": "1"}),
        (
            {"lora": {"rank": 8, "targets": ["attn", "mlp"]}},
            {"lora.rank": "8", "lora.targets": '["attn", "mlp"]'},
        ),
        ({"x": {"y": {"z": None}}, "e": {}}, {"x.y.z": "None", "e": "{}"}),
        ({"s": [{"kind": "probe"}]}, {"s": '[{"kind": "probe"}]'}),
        ({"long": "x" * 7000}, {"long": "x" * MAX_PARAM_VAL_LENGTH}),
    ],
)
def test_flatten_params(cfg, expected):
    assert flatten_params(cfg) == expected


def test_resolved_config_round_trips(tracking):
    cfg = {
        "task": "classify",
        "backbone": {"name": "dinov2_tiny", "img_size": 56},
        "lora": {"rank": 4, "alpha": 8.0, "targets": ["attn"]},
        "stages": [
            {"name": "probe", "kind": "probe", "epochs": 1},
            {"name": "lora", "kind": "lora", "epochs": 2},
        ],
        "data": {"root": "/data/pets", "note": "é" * 7000},
    }
    with mlflow.start_run(experiment_id=tracking.experiment_id) as run:
        log_resolved_config(cfg)
    text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config/resolved.yaml")
    assert yaml.safe_load(text) == cfg
    params = mlflow.get_run(run.info.run_id).data.params
    assert params["lora.rank"] == "4"
    assert params["backbone.name"] == "dinov2_tiny"
    assert json.loads(params["stages"]) == cfg["stages"]
    assert len(params["data.note"]) == MAX_PARAM_VAL_LENGTH


def test_epoch_metrics_history(tracking, caplog):
    client = mlflow.MlflowClient()
    with mlflow.start_run(experiment_id=tracking.experiment_id) as run:
        log_epoch(
            {"train/loss": 1.0, "val/presence/accuracy": 0.5}, epoch=0, stage_index=0, stage_name="probe"
        )
        log_epoch(
            {"train/loss": 0.8, "val/presence/accuracy": 0.6}, epoch=1, stage_index=0, stage_name="probe"
        )
        with caplog.at_level(logging.WARNING, logger="prism.tracking.runs"):
            logged = log_epoch(
                {"train/loss": math.nan, "val/presence/accuracy": 0.7},
                epoch=2,
                stage_index=1,
                stage_name="lora",
            )
    assert "train/loss" not in logged and "non-finite" in caplog.text
    run_id = run.info.run_id

    def history(key):
        return [
            (m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        ]

    assert history("val/presence/accuracy") == [(0, 0.5), (1, 0.6), (2, 0.7)]
    assert history("train/loss") == [(0, 1.0), (1, 0.8)]
    assert history("stage_index") == [(0, 0.0), (1, 0.0), (2, 1.0)]
    assert mlflow.get_run(run_id).data.tags["stage.current"] == "lora"


def test_stage_tags(tracking):
    stages = [
        {"name": "probe", "kind": "probe", "epochs": 2, "lr": {"head": 1e-3}},
        {"name": "lora", "kind": "lora", "epochs": 5},
    ]
    with mlflow.start_run(experiment_id=tracking.experiment_id) as run:
        tag_stages(stages)
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert {k: v for k, v in tags.items() if k.startswith("stage.")} == {
        "stage.count": "2",
        "stage.0.name": "probe",
        "stage.0.kind": "probe",
        "stage.0.epochs": "2",
        "stage.1.name": "lora",
        "stage.1.kind": "lora",
        "stage.1.epochs": "5",
    }


@pytest.mark.parametrize(
    "call",
    [
        lambda: log_resolved_config({"a": 1}),
        lambda: log_epoch({"a": 1.0}, 0, 0, "probe"),
        lambda: tag_stages([]),
        lambda: log_history_plots([{"epoch": 0, "train/loss": 1.0}]),
    ],
    ids=["config", "epoch", "stages", "plots"],
)
def test_run_helpers_need_an_active_run(tracking, call):
    with pytest.raises(RuntimeError, match="active MLflow run"):
        call()
    assert mlflow.active_run() is None


def test_stage_spans():
    history = [
        {"epoch": e, "stage_index": s, "stage_name": n}
        for e, s, n in [(0, 0, "probe"), (1, 0, "probe"), (2, 1, "lora"), (3, 1, "lora"), (4, 2, "unfreeze")]
    ]
    assert stage_spans(history) == [(0, "probe", -0.5, 1.5), (1, "lora", 1.5, 3.5), (2, "unfreeze", 3.5, 4.5)]


def test_history_plots_are_png_artifacts(tracking, tmp_path):
    history = [
        {
            "epoch": e,
            "stage_index": s,
            "stage_name": n,
            "train/loss": 1.0 / (e + 1),
            "val/loss": 1.2 / (e + 1) if e != 1 else math.nan,
            "val/presence/accuracy": 0.5 + 0.1 * e,
        }
        for e, s, n in [(0, 0, "probe"), (1, 0, "probe"), (2, 1, "lora"), (3, 1, "lora")]
    ]
    with mlflow.start_run(experiment_id=tracking.experiment_id) as run:
        paths = log_history_plots(history, ["val/presence/accuracy", "val/never_logged"])
    assert paths == ["plots/loss.png", "plots/val_presence_accuracy.png"]
    listed = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert listed == set(paths)
    local = Path(
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="plots", dst_path=tmp_path)
    )
    for path in paths:
        assert (local.parent / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or pyplot.get_fignums() == []


def test_log_figure_closes_pyplot_figures(tracking):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    with mlflow.start_run(experiment_id=tracking.experiment_id) as run:
        log_figure(fig, "plots/custom.png")
    assert not plt.fignum_exists(fig.number)
    assert [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")] == [
        "plots/custom.png"
    ]
