"""prism.tracking.registry: registering bundles as model versions, their tags and layout, champion promotion."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import mlflow.artifacts
import pytest

from prism.inference.publish import register_bundle
from prism.tracking import promote_if_better, set_alias
from tests.helpers.bundles import BUNDLE_FILES, make_bundle
from tests.helpers.mlflow_store import PIP, new_run

EXPERIMENT = "prism-unit"

# MLflow's own SQLAlchemy store triggers this at start-up; nothing in prism can change it.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


@pytest.mark.parametrize(
    ("mode", "steps"),
    [
        ("max", [(0.5, True), (0.4, False), (0.6, True), (0.6, False)]),
        ("min", [(0.5, True), (0.6, False), (0.4, True), (0.4, False)]),
    ],
)
def test_champion_promotion_table(tracking, tmp_path, mode, steps):
    name = f"prism-promote-{mode}"
    run_id = new_run(tracking.experiment_id)
    client = mlflow.MlflowClient()
    champion = None
    for i, (value, promoted) in enumerate(steps):
        mv = register_bundle(
            make_bundle(tmp_path, str(i)),
            name,
            run_id=run_id,
            metric="val/accuracy",
            value=value,
            mode=mode,
            pip_requirements=PIP,
        )
        assert int(mv.version) == i + 1
        assert promote_if_better(name, mv.version) is promoted, (mode, value)
        champion = mv.version if promoted else champion
        assert client.get_model_version_by_alias(name, "champion").version == champion
    assert promote_if_better(name, champion) is False  # already holds it


def test_register_bundle_tags_and_layout(tracking, tmp_path):
    run_id = new_run(tracking.experiment_id)
    bundle = make_bundle(tmp_path, "layout")
    mv = register_bundle(
        bundle, "prism-layout", run_id=run_id, metric="val/loss", value=0.25, mode="min", pip_requirements=PIP
    )
    assert mv.run_id == run_id
    assert mv.source.startswith("models:/m-")  # MLflow 3: the version points at a LoggedModel
    tags = mlflow.MlflowClient().get_model_version("prism-layout", mv.version).tags
    assert tags == {
        "prism.metric": "val/loss",
        "prism.metric_value": "0.25",
        "prism.metric_mode": "min",
        "prism.backbone": "dinov2_tiny",
        "prism.weights_sha256": "sha-layout",
    }
    model_id = mv.source.removeprefix("models:/")
    stored = tracking.workdir / "mlartifacts" / EXPERIMENT / "models" / model_id / "artifacts"
    assert {"MLmodel", "python_model.pkl", "requirements.txt"} <= {p.name for p in stored.iterdir()}
    assert {p.name for p in (stored / "artifacts" / "bundle").iterdir()} == BUNDLE_FILES
    assert (stored / "requirements.txt").read_text().split() == PIP
    # the uv project of the current directory (this repo) is not copied into the model
    assert not {"uv.lock", "pyproject.toml"} & {p.name for p in stored.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == [bundle.name]  # staging folder cleaned up
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"  # resumed for logging, status restored
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]


def test_register_bundle_defaults(tracking, tmp_path):
    """A folder already named "bundle" is logged in place; requirements default to pinned versions."""
    bundle = make_bundle(tmp_path, "x").rename(tmp_path / "bundle")
    mv = register_bundle(
        bundle, "prism-defaults", run_id=new_run(tracking.experiment_id), metric="m", value=1, mode="max"
    )
    model_dir = Path(
        mlflow.artifacts.download_artifacts(f"models:/prism-defaults/{mv.version}", dst_path=tmp_path / "dl")
    )
    assert {p.name for p in (model_dir / "artifacts" / "bundle").iterdir()} == BUNDLE_FILES
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert f"mlflow=={mlflow.__version__}" in requirements
    assert all("==" in r and "+" not in r for r in requirements)


def test_register_bundle_errors(tracking, tmp_path):
    bundle = make_bundle(tmp_path, "err")
    run_id = new_run(tracking.experiment_id)
    kwargs = {"run_id": run_id, "metric": "m", "value": 1.0, "mode": "max", "pip_requirements": PIP}
    with pytest.raises(ValueError, match="mode must be one of"):
        register_bundle(bundle, "prism-err", **{**kwargs, "mode": "best"})
    with pytest.raises(ValueError, match="not a directory"):
        register_bundle(tmp_path / "nope", "prism-err", **kwargs)
    with pytest.raises(ValueError, match="unknown run"):
        register_bundle(bundle, "prism-err", **{**kwargs, "run_id": "0" * 32})
    with mlflow.start_run(experiment_id=tracking.experiment_id), pytest.raises(RuntimeError, match="is active"):
        register_bundle(bundle, "prism-err", **kwargs)


def test_promotion_needs_comparable_metric(tracking, tmp_path, caplog):
    run_id = new_run(tracking.experiment_id)
    first = register_bundle(
        make_bundle(tmp_path, "a"),
        "prism-metrics",
        run_id=run_id,
        metric="val/accuracy",
        value=0.9,
        mode="max",
        pip_requirements=PIP,
    )
    assert promote_if_better("prism-metrics", first.version)
    other = register_bundle(
        make_bundle(tmp_path, "b"),
        "prism-metrics",
        run_id=run_id,
        metric="val/f1",
        value=0.99,
        mode="max",
        pip_requirements=PIP,
    )
    with caplog.at_level(logging.WARNING, logger="prism.tracking.registry"):
        assert promote_if_better("prism-metrics", other.version) is False
    assert "not ranked on 'val/f1'" in caplog.text
    set_alias("prism-metrics", "champion", other.version)
    assert (
        mlflow.MlflowClient().get_model_version_by_alias("prism-metrics", "champion").version == other.version
    )
    with pytest.raises(ValueError, match=r"versions: \[1, 2\]"):
        set_alias("prism-metrics", "champion", 7)
    with pytest.raises(ValueError, match="reserved"):
        set_alias("prism-metrics", "latest", 1)
