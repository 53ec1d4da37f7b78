"""``ray job submit --working-dir . -- prism train jobs/circles.yaml`` against ``ray start --head``.

Token authentication stays on: ``ray start`` writes the token and the client sends it with
``RAY_AUTH_MODE=token``.
"""

from __future__ import annotations

import json
import socket

import mlflow
import pytest

from tests.e2e.conftest import run

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray]

# Two workers of half a CPU each: DDP over gloo, metrics all-reduced, on a 2-CPU cluster.
OVERRIDES = ["data.synthetic.n=90", "backbone.img_size=64", "tracking.experiment=submitted",
             "train.num_workers=2", "train.cpus_per_worker=0.5",
             "stages=[{kind: probe, epochs: 1, lr: {head: 1e-3}}, {kind: lora, epochs: 1, lr: {head: 1e-3, lora: 1e-3}}]"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(project):
    gcs, dash = _free_port(), _free_port()
    env = {"RAY_AUTH_MODE": "token"}
    start = run(["ray", "start", "--head", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=true",
                 "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats"],
                cwd=project, env=env, timeout=180)
    assert start.returncode == 0, start.stdout + start.stderr
    yield f"http://127.0.0.1:{dash}", env
    run(["ray", "stop", "--force"], cwd=project, env=env, timeout=120)


def test_job_submit_trains_and_registers(cluster, project):
    address, env = cluster
    store = project / "submitted.db"
    runtime_env = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": f"sqlite:///{store}"}})
    out = run(["ray", "job", "submit", "--address", address, "--working-dir", ".", "--runtime-env-json",
               runtime_env, "--", "prism", "train", "jobs/circles.yaml", *OVERRIDES],
              cwd=project, env=env, timeout=900)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "succeeded" in text
    assert "[prism] epoch   2/2 [lora]" in text
    assert "on 2 workers (DDP, gloo)" in text
    assert "Reporting training result" not in text  # Ray Train's per-report lines stay in Ray's logs

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    exp = client.get_experiment_by_name("submitted")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val/macro_f1")] == [1, 2]
    mv = client.get_model_version_by_alias("circles", "champion")
    assert mv.run_id == runs[0].info.run_id


def test_job_submit_without_token_is_refused(cluster, project):
    address, _ = cluster
    out = run(["ray", "job", "submit", "--address", address, "--", "echo", "hi"], cwd=project,
              env={"RAY_AUTH_MODE": "disabled"}, timeout=120)
    assert out.returncode != 0
    assert "Missing authentication token" in out.stdout + out.stderr
