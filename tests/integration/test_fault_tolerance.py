"""A training worker killed in the middle of an epoch costs a restart from the latest checkpoint, not the run.

Two Ray Train workers (DDP over gloo) train a 6-epoch plan; once Ray Train has registered epoch 2 (its
report reached MLflow through the controller's callback), one worker process is killed with SIGKILL, as a
lost machine would be, while the group trains a later epoch. Ray Train restarts the worker group
(``FailureConfig(max_failures=train.max_failures)``), the loop resumes after the latest registered
checkpoint, and the run ends with every planned epoch logged exactly once and one registered version.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time

import mlflow
import psutil
import pytest

from prism.config import load_config
from tests.conftest import CIRCLES_JOB

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EPOCHS = 6
KILL_AFTER_EPOCH = 2


def _train_worker_pids() -> list[int]:
    """PIDs of this test's Ray Train worker actors: descendants of this process (the local Ray's raylet
    forks them) titled ``ray::RayTrainWorker…``; another Ray on the machine is never touched."""
    pids = []
    for p in psutil.Process().children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith("ray::RayTrainWorker"):
                pids.append(p.pid)
        except psutil.Error:  # exited meanwhile
            continue
    return sorted(pids)


class WorkerKiller(threading.Thread):
    """Kills one training worker once MLflow has ``after_epoch`` epochs of the experiment's run.

    MLflow hears of an epoch from the Train controller's callback, i.e. once Ray Train has registered that
    epoch's checkpoint (a checkpoint folder on disk alone may not be registered yet).
    """

    def __init__(self, experiment: str, after_epoch: int, timeout_s: float = 600):
        super().__init__(daemon=True)
        self.experiment, self.after_epoch, self.deadline = experiment, after_epoch, time.monotonic() + timeout_s
        self.killed: int | None = None
        self.workers_seen: list[int] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def _epochs_logged(self, client: mlflow.MlflowClient) -> int:
        exp = client.get_experiment_by_name(self.experiment)
        runs = client.search_runs([exp.experiment_id]) if exp else []
        return len(client.get_metric_history(runs[0].info.run_id, "train/loss")) if runs else 0

    def run(self) -> None:
        client = mlflow.MlflowClient()
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                ready = self._epochs_logged(client) >= self.after_epoch
            except Exception as e:  # e.g. SQLite busy while the driver writes: ask again
                self.errors.append(repr(e))
                ready = False
            if ready:
                self.workers_seen = _train_worker_pids()
                if len(self.workers_seen) == 2:
                    self.killed = self.workers_seen[-1]
                    os.kill(self.killed, signal.SIGKILL)
                    return
            self.stop.wait(0.1)


def test_lost_worker_resumes_from_checkpoint(ray_local, workdir, capfd):
    from prism.train.driver import run_training

    runs = workdir / "runs"
    cfg = load_config(CIRCLES_JOB, [
        "tracking.experiment=faults", "tracking.model_name=faults", f"train.storage_path={runs}",
        "train.num_workers=2", "train.cpus_per_worker=0.5", "train.max_failures=2",
        "data.synthetic.n=200", "backbone.img_size=64", "train.early_stop_patience=null",
        "stages=[{kind: probe, epochs: 2, lr: {head: 1e-3}}, {kind: lora, epochs: 4, lr: {head: 1e-3, lora: 1e-3}}]",
    ])
    killer = WorkerKiller("faults", KILL_AFTER_EPOCH)
    killer.start()
    try:
        outcome = run_training(cfg)
    finally:
        killer.stop.set()
        killer.join()

    assert killer.killed is not None, f"no worker killed (workers seen {killer.workers_seen}, {killer.errors})"
    with contextlib.suppress(psutil.NoSuchProcess):  # gone, as it should be, or a zombie
        assert psutil.Process(killer.killed).status() == psutil.STATUS_ZOMBIE
    out = capfd.readouterr()
    text = out.out + out.err
    prism_lines = "\n".join(line for line in text.splitlines() if "[prism]" in line or "rror" in line)
    resumed = [int(m) for m in re.findall(r"\[prism\] resuming after epoch (\d+)", text)]
    assert len(resumed) == 1 and KILL_AFTER_EPOCH <= resumed[0] < EPOCHS, prism_lines  # restarted group resumed

    assert [int(h["epoch"]) for h in outcome.history] == list(range(1, EPOCHS + 1))
    client = mlflow.MlflowClient()
    for key in ("train/loss", "val/macro_f1"):
        steps = [m.step for m in client.get_metric_history(outcome.run_id, key)]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (key, steps)  # each epoch exactly once
    versions = client.search_model_versions("name='faults'")
    assert [str(v.version) for v in versions] == ["1"] and outcome.model_version == "1"
