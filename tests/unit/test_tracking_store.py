"""prism.tracking.store: which tracking URI wins, the embedded SQLite default, where artifacts go."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from prism.tracking import browse_command, configure_tracking, get_or_create_experiment
from tests.helpers.mlflow_store import mlflow_store

EXPERIMENT = "prism-unit"

# MLflow's own SQLAlchemy store triggers this at start-up; nothing in prism can change it.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


@pytest.fixture
def restore_uris(monkeypatch):
    """MLflow's global URIs (and the env vars it exports them to) as they were before the test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unused")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "unused")
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def test_default_store_is_cwd_mlflow_db(tmp_path, monkeypatch, restore_uris):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = configure_tracking()
    assert uri == f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    assert uri.startswith("sqlite:////")  # absolute
    assert mlflow.get_tracking_uri() == uri
    assert mlflow.get_registry_uri() == uri


@pytest.mark.parametrize(
    ("arg", "env", "expected"),
    [
        (None, None, "sqlite:///{work}/mlflow.db"),
        (None, "sqlite:///{tmp}/env.db", "sqlite:///{tmp}/env.db"),
        ("sqlite:///{tmp}/arg.db", "sqlite:///{tmp}/env.db", "sqlite:///{tmp}/arg.db"),
        ("http://tracking:5000", None, "http://tracking:5000"),
    ],
)
def test_tracking_uri_precedence(tmp_path, monkeypatch, restore_uris, arg, env, expected):
    fill = {"tmp": tmp_path, "work": tmp_path / "work"}
    if env is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env.format(**fill))
    uri = configure_tracking(None if arg is None else arg.format(**fill), workdir=tmp_path / "work")
    assert uri == expected.format(**fill)
    assert mlflow.get_tracking_uri() == uri
    assert mlflow.get_registry_uri() == uri
    if uri.startswith("sqlite"):
        assert Path(uri.removeprefix("sqlite:///")).parent.is_dir()


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:////data/runs/mlflow.db", "mlflow ui --backend-store-uri sqlite:////data/runs/mlflow.db"),
        ("sqlite:///mlflow.db", "mlflow ui --backend-store-uri sqlite:///{cwd}/mlflow.db"),
        (
            "sqlite:////data/my runs/mlflow.db",
            "mlflow ui --backend-store-uri 'sqlite:////data/my runs/mlflow.db'",
        ),
        ("postgresql://u@db/mlflow", "mlflow ui --backend-store-uri postgresql://u@db/mlflow"),
        ("postgresql+psycopg2://u:s3cret@db:5432/mlflow",  # never the password
         "mlflow ui --backend-store-uri 'postgresql+psycopg2://u:***@db:5432/mlflow'"),
        ("http://tracking:5000", "http://tracking:5000"),
        ("https://u:tok@tracking", "https://u:***@tracking"),
    ],
)
def test_browse_command(uri, expected):
    assert browse_command(uri) == expected.format(cwd=Path.cwd())


def test_experiment_artifacts_next_to_embedded_store(tmp_path):
    with mlflow_store(tmp_path, EXPERIMENT) as store:
        assert get_or_create_experiment(EXPERIMENT) == store.experiment_id
        location = mlflow.get_experiment(store.experiment_id).artifact_location
        assert location == str(store.workdir / "mlartifacts" / EXPERIMENT)
        odd = mlflow.get_experiment(get_or_create_experiment("team/odd name")).artifact_location
        assert odd == str(store.workdir / "mlartifacts" / "team_odd_name")
        with pytest.raises(ValueError, match="non-empty"):
            get_or_create_experiment(" ")
