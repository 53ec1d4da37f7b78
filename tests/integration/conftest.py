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
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(d)
    yield d
    os.chdir(old)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if saved is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved
