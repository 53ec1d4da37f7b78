"""Integration tests share the session's local Ray (2 CPUs) and run in a scratch working folder per module."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def ray_local(ray_session):
    return ray_session


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch working folder with its own SQLite MLflow store (the embedded default)."""
    d = tmp_path_factory.mktemp("work")
    old = os.getcwd()
    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    os.chdir(d)
    yield d
    os.chdir(old)
    for key, value in saved.items():  # MLflow exports the URIs it was set to: put back what was there
        os.environ.pop(key, None)
        if value is not None:
            os.environ[key] = value
