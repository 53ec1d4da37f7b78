"""Prism across nodes, on Ray's multi-node simulator: ``ray job submit`` trains on two workers placed on two
nodes, checkpoints go to storage every node reaches, and Serve runs a replica on each node.

The cluster (``tests.helpers.multinode``): a head with no CPUs (it runs the job's driver, the Train
controller, the Serve controller and the HTTP proxy, which need none) and two worker nodes of 2 CPUs each,
in a process of its own; this test process never connects to it, it drives it through the CLIs a user has
(``ray job submit``, ``serve deploy``, ``ray list``), with token authentication on.

Every node of the simulator shares this machine's disk, so a path that exists on the head exists
everywhere and a file-not-found across nodes cannot happen here. The test therefore proves the storage
rules by construction instead:

- checkpoints go to an S3 bucket (a local S3-compatible server), never to a disk: the checkpoint the
  driver on the head registers is one that rank 0 uploaded from a worker node, byte for byte;
- MLflow uses one absolute store all processes name (the stand-in for the cluster's tracking server),
  handed to the job in its ``runtime_env``; the replicas on the worker nodes load the model from it;
- the data is a relative ``data.root`` inside the submitted working folder (shipped to every node).

Serve's proxy runs on the head only (``proxy_location: HeadOnly``): no replica can run there, so every
answered request went from the head's proxy to a replica on another node. (``EveryNode`` also starts on
the simulator, the proxies sharing the loopback port through SO_REUSEPORT, but a proxy prefers the
replica on its own node and the kernel picks the proxy: nothing would have to cross nodes.)
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import mlflow
import pytest
import requests
import yaml

from tests.conftest import ROOT
from tests.e2e.conftest import run
from tests.helpers.multinode import simulated_cluster
from tests.helpers.ray_procs import free_port
from tests.helpers.s3 import s3_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray]

BUCKET = "prism-checkpoints"
EXPERIMENT = "multinode"
MODEL = "circles"
TOKEN_ENV = {"RAY_AUTH_MODE": "token"}
# Two workers of 1 CPU, one per node (STRICT_SPREAD); one probe epoch of a tiny model (LoRA built, not trained:
# the bundle still holds the adapters) on 60 images.
TRAIN_ARGS = ["data.root=data/circles", "backbone.img_size=64", f"tracking.experiment={EXPERIMENT}",
              f"tracking.model_name={MODEL}", "train.num_workers=2", "train.cpus_per_worker=1",
              "train.placement_strategy=STRICT_SPREAD", f"train.storage_path=s3://{BUCKET}/runs",
              "train.early_stop_patience=null", "stages=[{kind: probe, epochs: 1, lr: {head: 1e-3}}]"]


@pytest.fixture(scope="module")
def workdir(project) -> Path:
    """The folder submitted as ``--working-dir``: ``jobs/`` and 60 labelled images under ``data/circles``."""
    from prism.data.synth import SYNTH_GENERATORS

    SYNTH_GENERATORS["circles"](project / "data" / "circles", n=60, size=64, seed=0)
    return project


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """The MLflow store every process names: an absolute SQLite path (a tracking server on a cluster)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def s3():
    with s3_server(BUCKET) as (env, client):
        yield env, client


@pytest.fixture(scope="module")
def cluster(workdir):
    with simulated_cluster(workdir) as c:
        yield c


def ray_list(kind: str, cluster, workdir: Path, *filters: str) -> list[dict]:
    """``ray list <kind> --detail`` of the cluster's State API, as dicts (dead actors and ended jobs too)."""
    args = [a for f in filters for a in ("--filter", f)]
    out = run(["ray", "list", kind, "--address", cluster.dashboard, "--detail", "--format", "json", "--limit",
               "1000", *args], cwd=workdir, env=TOKEN_ENV, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def trained(cluster, workdir, store, s3):
    """Submit ``prism train`` as a user would; returns the job's output, its record and its train workers."""
    env, _ = s3
    runtime_env = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": store, **env}})
    submission = "prism-multinode-train"
    started = time.monotonic()
    out = run(["ray", "job", "submit", "--address", cluster.dashboard, "--submission-id", submission,
               "--working-dir", ".", "--runtime-env-json", runtime_env, "--", "prism", "train", "jobs/circles.yaml",
               *TRAIN_ARGS], cwd=workdir, env=TOKEN_ENV, timeout=900)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-6000:]
    print(f"training job: {time.monotonic() - started:.0f} s")
    job = next(j for j in ray_list("jobs", cluster, workdir) if j["submission_id"] == submission)
    workers = [a for a in ray_list("actors", cluster, workdir, "class_name=RayTrainWorker")
               if a["job_id"] == job["job_id"]]
    return {"text": text, "job": job, "workers": workers}


def test_train_workers_run_on_different_worker_nodes(trained, cluster):
    assert trained["job"]["status"] == "SUCCEEDED"
    assert "on 2 workers (DDP, gloo)" in trained["text"]
    nodes = sorted(cluster.node_name(a["node_id"]) for a in trained["workers"])
    assert nodes == ["worker-1", "worker-2"], trained["workers"]  # STRICT_SPREAD: one per node, none restarted
    assert cluster.node_name(trained["job"]["driver_node_id"]) == "head"


def rank0_node(trained, cluster) -> str:
    """The node of the worker that logged the epoch lines: rank 0, which also writes the checkpoint."""
    pids = set(re.findall(r"\(RayTrainWorker pid=(\d+)[^)]*\)\S*\s+\[prism\] epoch", trained["text"]))
    assert len(pids) == 1, f"epoch lines from workers {pids}"
    pid = int(pids.pop())
    (worker,) = [a for a in trained["workers"] if a["pid"] == pid]
    return cluster.node_name(worker["node_id"])


def test_checkpoint_written_on_a_worker_node_is_what_the_head_registered(trained, cluster, store, s3, tmp_path):
    _, client = s3
    assert rank0_node(trained, cluster).startswith("worker-")
    client_ml = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    (run_info,) = client_ml.search_runs([client_ml.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert run_info.info.status == "FINISHED"
    (version,) = client_ml.search_model_versions(f"name='{MODEL}'")
    assert version.run_id == run_info.info.run_id
    assert client_ml.get_model_version_by_alias(MODEL, "champion").version == version.version

    # the checkpoint: in the bucket under the run's folder, not on any node's disk
    checkpoint = f"runs/{EXPERIMENT}-{run_info.info.run_id[:8]}/epoch_0001"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=checkpoint)["Contents"]]
    assert f"{checkpoint}/weights.safetensors" in keys, keys
    assert re.search(rf"\[prism\] best checkpoint: (s3://)?{BUCKET}/{checkpoint}\s", trained["text"])
    uploaded = client.get_object(Bucket=BUCKET, Key=f"{checkpoint}/weights.safetensors")["Body"].read()

    # the registered bundle: what the driver on the head read from the bucket
    location = client_ml.get_model_version_download_uri(MODEL, version.version)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(tmp_path),
                                                     tracking_uri=store))
    (registered,) = local.rglob("weights.safetensors")
    assert hashlib.sha256(registered.read_bytes()).digest() == hashlib.sha256(uploaded).digest()


def serve_config(path: Path, store: str, port: int) -> Path:
    """``serve_configs/circles.yaml`` for this cluster: the head's proxy only, on ``port``; two replicas, at
    most one per node, of half a CPU; the models in ``store``."""
    raw = yaml.safe_load((ROOT / "serve_configs" / "circles.yaml").read_text())
    raw["proxy_location"] = "HeadOnly"
    raw["http_options"] = {"host": "127.0.0.1", "port": port}
    (app,) = raw["applications"]
    app["args"]["tracking_uri"] = store
    (deployment,) = app["deployments"]
    deployment.pop("autoscaling_config")
    deployment.update(num_replicas=2, max_replicas_per_node=1, ray_actor_options={"num_cpus": 0.5})
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def wait_until_running(cluster, workdir: Path, timeout_s: float = 420) -> dict:
    """The application's ``serve status`` once it is RUNNING; fails on DEPLOY_FAILED or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = run(["serve", "status", "--address", cluster.dashboard], cwd=workdir, env=TOKEN_ENV, timeout=120)
        apps = (yaml.safe_load(out.stdout) or {}).get("applications", {}) if out.returncode == 0 else {}
        status = apps.get("circles")
        if status and status["status"] == "RUNNING":
            return status
        assert not status or status["status"] != "DEPLOY_FAILED", status
        assert time.monotonic() < deadline, out.stdout + out.stderr
        time.sleep(3)


def test_serve_runs_a_replica_on_each_worker_node_behind_the_head(trained, cluster, workdir, store):
    port = free_port()
    config = serve_config(workdir / "serve_multinode.yaml", store, port)
    started = time.monotonic()
    out = run(["serve", "deploy", str(config), "--address", cluster.dashboard], cwd=workdir, env=TOKEN_ENV,
              timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    status = wait_until_running(cluster, workdir)
    print(f"serve deploy to RUNNING: {time.monotonic() - started:.0f} s")
    assert status["deployments"]["ModelServer"]["replica_states"] == {"RUNNING": 2}

    alive = ray_list("actors", cluster, workdir, "state=ALIVE")
    replicas = sorted(cluster.node_name(a["node_id"]) for a in alive
                      if a["class_name"].startswith("ServeReplica:circles"))
    proxies = sorted(cluster.node_name(a["node_id"]) for a in alive if a["class_name"] == "ProxyActor")
    assert (replicas, proxies) == (["worker-1", "worker-2"], ["head"]), alive

    images = sorted((workdir / "data" / "circles" / "images").glob("*.png"))[:2]
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images]
    # the head's proxy is the only one, and no replica runs on the head: the answer crossed nodes
    response = requests.post(f"http://127.0.0.1:{port}/predict", files=files, timeout=120)
    assert response.status_code == 200, response.text
    results = response.json()
    assert [r["image"] for r in results] == [p.name for p in images]
    assert all(r["presence"]["prediction"] in {"circle_clear", "circle_resembles", "no_circle"} for r in results)
    health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30).json()
    assert health == {"status": "ok", "model": f"{MODEL} v1"}
