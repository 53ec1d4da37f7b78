"""Ray Train callback that logs every reported epoch to MLflow as it happens.

It runs in the Train controller, which Ray places on the driver's node, so the embedded SQLite store in
the working folder is reachable; on a cluster point ``MLFLOW_TRACKING_URI`` at a tracking server.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from ray.train import UserCallback

__all__ = ["MlflowEpochLogger"]

log = logging.getLogger(__name__)


class MlflowEpochLogger(UserCallback):
    """Logs rank 0's metrics of each ``ray.train.report`` into an existing MLflow run, step = epoch.

    Each epoch is logged once: after a worker-group restart the loop resumes after the latest checkpoint,
    and an epoch reported again (its checkpoint lost with the failed group) is not logged a second time.
    """

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self._client = None
        self._logged: set[int] = set()

    def _get_client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        from mlflow.entities import Metric

        if not metrics:
            return
        m = metrics[0]
        step = int(m.get("epoch", 0))
        if step in self._logged:
            log.warning("epoch %d was reported again after a restart; MLflow keeps its first report", step)
            return
        self._logged.add(step)
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in m.items()
                 if isinstance(v, (int, float)) and math.isfinite(float(v)) and k != "epoch"]
        for i in range(0, len(batch), 900):
            self._get_client().log_batch(self.run_id, metrics=batch[i:i + 900])
