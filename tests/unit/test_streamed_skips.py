"""Samples dropped while streaming shards reach MLflow after training (``prism.engine.driver``)."""

from __future__ import annotations

import io

import mlflow
import pandas as pd

from prism.data.datasets import TrainData
from prism.engine.driver import _log_streamed_skips


class StubData(TrainData):
    def __init__(self, table: pd.DataFrame | None):
        self.ledger = None if table is None else object()
        self.table = table

    def skipped_while_streaming(self) -> pd.DataFrame:
        return self.table


def test_skipped_samples_are_logged_as_metric_and_table(tmp_path, capsys):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    table = pd.DataFrame({"shard": ["s3://b/train-000001.tar"], "key": ["00000007"],
                          "reason": ["undecodable image: broken"]})
    with mlflow.start_run() as run:
        _log_streamed_skips(StubData(table))
        _log_streamed_skips(StubData(None))  # a CSV source has no ledger: nothing logged
    got = mlflow.MlflowClient().get_run(run.info.run_id)
    assert got.data.metrics == {"data/skipped_samples": 1.0}
    logged = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/data/skipped_samples.csv")
    assert pd.read_csv(io.StringIO(logged), dtype=str).equals(table)
    assert "1 bad sample(s) skipped while streaming" in capsys.readouterr().out
