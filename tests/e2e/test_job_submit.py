"""``ray job submit --working-dir . -- prism train jobs/circles.yaml`` against ``ray start --head``, losing a
worker on the way.

Token authentication stays on: ``ray start`` writes the token and the client sends it with
``RAY_AUTH_MODE=token``.

The submitted job trains on two Ray Train workers (DDP over gloo). Once Ray Train has registered epoch 1
(its report reached MLflow through the controller's callback), one worker process is killed with SIGKILL,
as a lost machine would be, while the group trains a later epoch. Ray Train restarts the worker group
(``FailureConfig(max_failures=train.max_failures)``), the loop resumes after the latest registered
checkpoint, and the job ends with every planned epoch logged exactly once and one registered version.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import mlflow
import psutil
import pytest

from tests.e2e.conftest import run
from tests.helpers.ray_procs import free_port, private_ray_tmp, ray_processes, stop_ray_processes

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray]

EPOCHS = 4
# After the first registered checkpoint: MLflow hears of an epoch through the Train controller, which can lag
# behind the workers on a busy machine; killing after epoch 1 leaves three epochs for the kill to land in.
KILL_AFTER_EPOCH = 1
EXPERIMENT = "submitted"
# Two workers of half a CPU each: DDP over gloo, metrics all-reduced, on a 2-CPU cluster.
OVERRIDES = ["data.synthetic.n=120", "backbone.img_size=64", f"tracking.experiment={EXPERIMENT}",
             "train.num_workers=2", "train.cpus_per_worker=0.5", "train.max_failures=2",
             "train.early_stop_patience=null",
             "stages=[{kind: probe, epochs: 1, lr: {head: 1e-3}}, {kind: lora, epochs: 3, lr: {head: 1e-3, lora: 1e-3}}]"]


@pytest.fixture(scope="module")
def cluster(project):
    """(dashboard URL, client env, Ray temp dir) of a ``ray start --head`` cluster under a private temp dir;
    at the end only its processes are stopped (``ray stop`` would stop every Ray on the machine)."""
    gcs, dash = free_port(), free_port()
    ray_tmp = private_ray_tmp()
    env = {"RAY_AUTH_MODE": "token"}
    try:
        # as the README does: `ray start` turns token auth on only where a token exists (a fresh machine has none)
        token = run(["ray", "get-auth-token", "--generate"], cwd=project, env=env, timeout=120)
        assert token.returncode == 0, token.stdout + token.stderr
        start = run(["ray", "start", "--head", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=true",
                     "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats",
                     f"--temp-dir={ray_tmp}"], cwd=project, env=env, timeout=180)
        assert start.returncode == 0, start.stdout + start.stderr
        assert ray_processes(ray_tmp), "no process names the cluster's temp dir: it could not be stopped alone"
        wait_for_job_agent(f"http://127.0.0.1:{dash}", project, env)
        yield f"http://127.0.0.1:{dash}", env, ray_tmp
    finally:
        stop_ray_processes(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def wait_for_job_agent(address: str, project: Path, env: dict, timeout_s: float = 180) -> None:
    """Return once the head accepts a job: ``ray start`` returns before the node's job agent has registered,
    and until it has, the dashboard refuses submissions with "No available agent to submit job"."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = run(["ray", "job", "submit", "--address", address, "--", "true"], cwd=project, env=env, timeout=120)
        text = out.stdout + out.stderr
        if out.returncode == 0:
            return
        assert "No available agent" in text and time.monotonic() < deadline, text[-2000:]
        time.sleep(1)  # the agent's registration is not an event a client can await


def train_worker_pids(ray_tmp: Path) -> list[int]:
    """PIDs of the cluster's Ray Train worker actors: processes titled ``ray::RayTrainWorker…`` under the
    raylet of that cluster (its command line names the cluster's temp dir); another Ray is never touched."""
    pids = set()
    for parent in ray_processes(ray_tmp):
        with contextlib.suppress(psutil.Error):
            for p in parent.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # exited meanwhile
                    if " ".join(p.cmdline()).startswith("ray::RayTrainWorker"):
                        pids.add(p.pid)
    return sorted(pids)


class WorkerKiller(threading.Thread):
    """Kills one training worker once MLflow has ``after_epoch`` epochs of the experiment's run.

    MLflow hears of an epoch from the Train controller's callback, i.e. once Ray Train has registered that
    epoch's checkpoint (a checkpoint folder on disk alone may not be registered yet).
    """

    def __init__(self, tracking_uri: str, ray_tmp: Path, after_epoch: int, timeout_s: float = 600):
        super().__init__(daemon=True)
        self.tracking_uri, self.ray_tmp, self.after_epoch = tracking_uri, ray_tmp, after_epoch
        self.deadline = time.monotonic() + timeout_s
        self.killed: int | None = None
        self.workers_seen: list[int] = []
        self.epochs_seen = 0
        self.errors: list[str] = []
        self.stop = threading.Event()

    def _epochs_logged(self, client: mlflow.MlflowClient) -> int:
        exp = client.get_experiment_by_name(EXPERIMENT)
        runs = client.search_runs([exp.experiment_id]) if exp else []
        return len(client.get_metric_history(runs[0].info.run_id, "train/loss")) if runs else 0

    def run(self) -> None:
        client = None
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                client = client or mlflow.MlflowClient(tracking_uri=self.tracking_uri)
                self.epochs_seen = self._epochs_logged(client)
                ready = self.epochs_seen >= self.after_epoch
            except Exception as e:  # no store yet, or SQLite busy while the job writes: ask again
                self.errors.append(repr(e))
                ready = False
            if ready:
                self.workers_seen = train_worker_pids(self.ray_tmp)
                if len(self.workers_seen) == 2:
                    self.killed = self.workers_seen[-1]
                    os.kill(self.killed, signal.SIGKILL)
                    return
            self.stop.wait(0.2)


def test_submitted_job_survives_a_lost_worker_and_registers(cluster, project):
    address, env, ray_tmp = cluster
    store = project / "submitted.db"
    uri = f"sqlite:///{store}"
    runtime_env = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": uri}})
    killer = WorkerKiller(uri, ray_tmp, KILL_AFTER_EPOCH)
    killer.start()
    try:
        out = run(["ray", "job", "submit", "--address", address, "--working-dir", ".", "--runtime-env-json",
                   runtime_env, "--", "prism", "train", "jobs/circles.yaml", *OVERRIDES],
                  cwd=project, env=env, timeout=900)
    finally:
        killer.stop.set()
        killer.join()
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "succeeded" in text
    assert f"[prism] epoch   {EPOCHS}/{EPOCHS} [lora]" in text
    assert "on 2 workers (DDP, gloo)" in text
    assert "Reporting training result" not in text  # Ray Train's per-report lines stay in Ray's logs

    assert killer.killed is not None, (
        f"no worker killed (epochs in MLflow {killer.epochs_seen}, workers seen {killer.workers_seen}, "
        f"{killer.errors[-3:]})")
    prism_lines = "\n".join(line for line in text.splitlines() if "[prism]" in line or "rror" in line)
    resumed = [int(m) for m in re.findall(r"\[prism\] resuming after epoch (\d+)", text)]
    assert len(resumed) == 1 and KILL_AFTER_EPOCH <= resumed[0] < EPOCHS, prism_lines  # restarted group resumed

    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    for key in ("train/loss", "val/macro_f1"):
        steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, key)]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (key, steps, prism_lines)  # each epoch exactly once
    assert [str(v.version) for v in client.search_model_versions("name='circles'")] == ["1"]
    assert client.get_model_version_by_alias("circles", "champion").run_id == runs[0].info.run_id


def test_job_submit_without_token_is_refused(cluster, project):
    address, _, _ = cluster
    out = run(["ray", "job", "submit", "--address", address, "--", "echo", "hi"], cwd=project,
              env={"RAY_AUTH_MODE": "disabled"}, timeout=120)
    assert out.returncode != 0
    assert "Missing authentication token" in out.stdout + out.stderr
