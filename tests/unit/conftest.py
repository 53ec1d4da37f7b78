"""Unit-test fixtures: an MLflow SQLite store per module, and the tracking URI pointed at it per test."""

from __future__ import annotations

import mlflow
import pytest

from tests.helpers.mlflow_store import Store, mlflow_store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """A fresh SQLite MLflow store for the module (experiment ``prism-unit``), process-wide URIs restored after."""
    with mlflow_store(tmp_path_factory.mktemp("store")) as s:
        yield s


@pytest.fixture
def tracking(store) -> Store:
    """``store`` as the tracking and registry URI of this test; runs left open are ended after it."""
    from prism.tracking import configure_tracking

    configure_tracking(store.uri)
    yield store
    while mlflow.active_run() is not None:
        mlflow.end_run()
