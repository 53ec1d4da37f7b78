"""What only breaks across nodes is said where it starts: the embedded MLflow store of a submitted job, and
synthetic data generated on one node of several."""

from __future__ import annotations

import logging

import mlflow

from prism.runtime.ray_cluster import SUBMITTED_JOB_ENV
from prism.tracking import configure_tracking


def test_a_submitted_job_without_a_tracking_uri_is_told_its_store_does_not_last(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "unused")
    try:
        with caplog.at_level(logging.WARNING, logger="prism.tracking.store"):
            configure_tracking(workdir=tmp_path)
        assert not caplog.records  # on one's own machine the embedded store is the default, silently
        monkeypatch.setenv(SUBMITTED_JOB_ENV, "{}")
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # MLflow exported the URI it was set to
        with caplog.at_level(logging.WARNING, logger="prism.tracking.store"):
            uri = configure_tracking(workdir=tmp_path)
        (record,) = caplog.records
        assert uri in record.getMessage() and "no other node can open it" in record.getMessage()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="prism.tracking.store"):
            configure_tracking(f"sqlite:///{tmp_path}/shared.db")  # a store named on purpose: no warning
        assert not caplog.records
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def test_synthetic_data_on_one_node_of_several_is_warned_about(tmp_path, monkeypatch, caplog):
    from prism.data import datasets

    monkeypatch.setattr("prism.runtime.ray_cluster.alive_nodes", lambda: 1)
    with caplog.at_level(logging.WARNING, logger="prism.data.datasets"):
        datasets._warn_if_node_local(tmp_path, "data.synthetic.cache_dir")
    assert not caplog.records
    monkeypatch.setattr("prism.runtime.ray_cluster.alive_nodes", lambda: 3)
    with caplog.at_level(logging.WARNING, logger="prism.data.datasets"):
        datasets._warn_if_node_local(tmp_path, "data.synthetic.cache_dir")
    (record,) = caplog.records
    assert str(tmp_path) in record.getMessage() and "data.synthetic.cache_dir=/mnt/shared" in record.getMessage()


def test_a_checkpoint_on_remote_storage_is_named_by_its_uri():
    from types import SimpleNamespace

    import pyarrow.fs

    from prism.engine.driver import checkpoint_uri

    local = SimpleNamespace(path="/runs/r/epoch_0001", filesystem=pyarrow.fs.LocalFileSystem())
    assert checkpoint_uri(local) == "/runs/r/epoch_0001"
    s3 = SimpleNamespace(path="bucket/runs/r/epoch_0001", filesystem=SimpleNamespace(type_name="s3"))
    assert checkpoint_uri(s3) == "s3://bucket/runs/r/epoch_0001"
    gcs = SimpleNamespace(path="bucket/r", filesystem=SimpleNamespace(type_name="gcs"))
    assert checkpoint_uri(gcs) == "gs://bucket/r"
