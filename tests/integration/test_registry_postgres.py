"""The model registry on a real database and object store: MLflow on PostgreSQL with artifacts in S3.

One throwaway PostgreSQL server (Debian's binaries, loopback) and one S3-compatible server (moto, loopback)
serve the module, set up as a client of ``mlflow server --backend-store-uri postgresql+psycopg2://...
--default-artifact-root s3://...`` would find them: the tracking URI is the database, the experiment's
artifact location a bucket. On it:

- one real tiny training job (``run_training`` on the session's Ray) registers a version: its rows are in
  PostgreSQL, its files in the bucket and nowhere on local disk;
- Ray Serve loads that version from there (the replicas get the bucket's credentials through the Serve
  config's ``runtime_env``), answers ``/predict``, and follows the alias to a second, better version on
  ``POST /reload``;
- two processes race the driver's post-training step (``register_bundle`` then promote) round after round:
  no version is lost and every promotion compared against the version really holding the alias.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import queue
import time
from pathlib import Path

import mlflow
import pytest
import requests
import sqlalchemy as sa
import yaml
from sqlalchemy.pool import NullPool

from prism.config import load_config
from prism.tracking.registry import METRIC_VALUE_TAG, VAL_FINGERPRINT_TAG
from tests.conftest import CIRCLES_JOB, ROOT
from tests.helpers.postgres import postgres_server
from tests.helpers.promotion_race import Record, check_history, register_and_promote
from tests.helpers.ray_procs import free_port
from tests.helpers.s3 import s3_server

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
]

BUCKET = "prism-mlflow"
EXPERIMENT = "registry-pg"
MODEL = "circles-pg"
RACE_MODEL = "circles-pg-race"
ROUNDS = 10
TIMEOUT = 60
TOKEN_ENV, TOKEN = "PRISM_RELOAD_TOKEN", "registry-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# jobs/circles.yaml made tiny: 90 images at 64 px, one probe and one LoRA epoch
TINY = ["data.synthetic.n=90", "backbone.img_size=64", f"tracking.experiment={EXPERIMENT}",
        f"tracking.model_name={MODEL}",
        "stages=[{kind: probe, epochs: 1, lr: {head: 1e-3}}, {kind: lora, epochs: 1, lr: {head: 1e-3, lora: 1e-3}}]"]


@pytest.fixture(scope="module")
def pg() -> str:
    with postgres_server() as uri:
        yield uri


@pytest.fixture(scope="module")
def s3():
    with s3_server(BUCKET) as (env, client):
        yield env, client


@pytest.fixture(scope="module")
def store(pg, s3, workdir):
    """MLflow pointed at PostgreSQL, the bucket's credentials in the environment, the experiment's artifacts
    in ``s3://prism-mlflow/registry-pg``; yields its experiment id."""
    env, _ = s3
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        from prism.tracking import configure_tracking

        configure_tracking(pg)
        from prism.tracking import get_or_create_experiment

        # what the driver does with tracking.artifact_location (a database store has no artifact default)
        experiment_id = get_or_create_experiment(EXPERIMENT, f"s3://{BUCKET}/{EXPERIMENT}")
        try:
            yield experiment_id
        finally:
            while mlflow.active_run() is not None:
                mlflow.end_run()
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)


@contextlib.contextmanager
def database(uri: str):
    engine = sa.create_engine(uri, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def bucket_keys(s3, prefix: str) -> set[str]:
    _, client = s3
    keys = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys.update(obj["Key"] for obj in page.get("Contents", []))
    return keys


def test_advisory_lock_excludes_times_out_and_leaks_no_connection(pg):
    """The PostgreSQL promotion lock: one holder per (model, alias), a bounded wait, released on an exception,
    and no connection left behind."""
    from prism.tracking.promotion_lock import lock_key, promotion_lock

    def others(sql: str) -> int:
        with database(pg) as conn:
            return conn.execute(sa.text(sql)).scalar_one()

    sessions = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()")
    advisory = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    before = others(sessions)
    with promotion_lock(pg, MODEL, "champion") as kind:
        assert kind == "postgresql" and others(advisory) == 1
        with pytest.raises(TimeoutError, match=f"advisory lock {lock_key(MODEL, 'champion')}"), \
                promotion_lock(pg, MODEL, "champion", timeout_s=0.3):
            pass
        with promotion_lock(pg, MODEL, "candidate", timeout_s=0.3):  # another alias: not blocked
            assert others(advisory) == 2
    with pytest.raises(KeyError), promotion_lock(pg, MODEL, "champion", timeout_s=5):
        raise KeyError("fails while promoting")
    with promotion_lock(pg, MODEL, "champion", timeout_s=5):
        pass
    assert others(advisory) == 0 and others(sessions) == before


def test_a_new_experiment_on_a_database_store_needs_an_artifact_location(store, pg):
    from prism.tracking import browse_command, get_or_create_experiment

    with pytest.raises(ValueError, match=r"no artifact location is set.*tracking\.artifact_location") as info:
        get_or_create_experiment("nowhere")
    assert "prism:***@" in str(info.value) and ":prism@" not in str(info.value)  # the password is not shown
    assert mlflow.MlflowClient().get_experiment_by_name("nowhere") is None
    assert get_or_create_experiment(EXPERIMENT) == store  # an existing one keeps its location
    assert "prism:***@127.0.0.1" in browse_command(pg) and ":prism@" not in browse_command(pg)


@pytest.fixture(scope="module")
def trained(ray_local, store, pg, workdir):
    from prism.engine.driver import run_training

    cfg = load_config(CIRCLES_JOB, [*TINY, f"tracking.tracking_uri={pg}", f"train.storage_path={workdir / 'runs'}",
                                    f"tracking.artifact_location=s3://{BUCKET}/{EXPERIMENT}"])
    start = time.monotonic()
    outcome = run_training(cfg, job_file=str(CIRCLES_JOB))
    print(f"[registry-pg] training took {time.monotonic() - start:.1f} s")
    return outcome


def test_training_registers_into_postgres_and_s3(trained, pg, s3, store, workdir):
    assert (trained.model_version, trained.promoted) == ("1", True)
    with database(pg) as conn:
        rows = conn.execute(sa.text("SELECT version, run_id, source FROM model_versions WHERE name = :n"),
                            {"n": MODEL}).all()
        alias = conn.execute(sa.text("SELECT version FROM registered_model_aliases WHERE name = :n AND "
                                     "alias = 'champion'"), {"n": MODEL}).scalar_one()
        run_artifacts = conn.execute(sa.text("SELECT artifact_uri FROM runs WHERE run_uuid = :r"),
                                     {"r": trained.run_id}).scalar_one()
    assert [(v, r) for v, r, _ in rows] == [(1, trained.run_id)] and alias == 1
    model_id = rows[0][2].removeprefix("models:/")
    assert run_artifacts == f"s3://{BUCKET}/{EXPERIMENT}/{trained.run_id}/artifacts"

    stored = f"{EXPERIMENT}/models/{model_id}/artifacts/"
    keys = bucket_keys(s3, f"{EXPERIMENT}/")
    assert {stored + "MLmodel", stored + "artifacts/bundle/weights.safetensors",
            f"{EXPERIMENT}/{trained.run_id}/artifacts/config/resolved.yaml",
            f"{EXPERIMENT}/{trained.run_id}/artifacts/plots/loss.png"} <= keys, sorted(keys)
    # the bucket holds the best checkpoint's weights, byte for byte
    _, client = s3
    in_bucket = client.get_object(Bucket=BUCKET, Key=stored + "artifacts/bundle/weights.safetensors")["Body"].read()
    local = (trained.best_checkpoint / "weights.safetensors").read_bytes()
    assert hashlib.sha256(in_bucket).hexdigest() == hashlib.sha256(local).hexdigest()
    # nothing went to a local store
    assert not (workdir / "mlruns").exists() and not (workdir / "mlflow.db").exists()


# ------------------------------------------------------------------------------------------ Serve


@pytest.fixture(scope="module")
def served(trained, pg, s3, tmp_path_factory):
    """The app of ``serve_configs/circles.yaml`` serving ``models:/circles-pg@champion`` from PostgreSQL + S3;
    the replicas get the bucket's credentials and the reload token through ``runtime_env``."""
    from ray import serve

    from prism.serve import ServeSettings, run_local

    env, _ = s3
    raw = yaml.safe_load((ROOT / "serve_configs" / "circles.yaml").read_text())
    (app,) = raw["applications"]
    app["route_prefix"] = "/circles"
    app["runtime_env"] = {"env_vars": {**env, TOKEN_ENV: TOKEN, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}}
    (dep,) = app["deployments"]
    dep["autoscaling_config"].update(min_replicas=1, max_replicas=1)  # one replica: /reload reaches it
    dep["user_config"] = ServeSettings(model_uri=f"models:/{MODEL}@champion", max_batch_size=4,
                                       reload={"enabled": True, "token_env": TOKEN_ENV}).model_dump(mode="json")
    path = tmp_path_factory.mktemp("serve") / "serve.yaml"
    path.write_text(yaml.safe_dump(raw))
    start = time.monotonic()
    url = run_local(path, tracking_uri=pg, host="127.0.0.1", port=free_port(), blocking=False)
    print(f"[registry-pg] Serve up in {time.monotonic() - start:.1f} s")
    try:
        yield url
    finally:
        serve.shutdown()


def predict(url: str, images: list[Path]) -> list[dict]:
    resp = requests.post(f"{url}/predict", files=[("images", (p.name, p.read_bytes(), "image/png")) for p in images],
                         timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    return resp.json()


def same_predictions(served: list[dict], local: list[dict]) -> bool:
    return all(s[h]["prediction"] == x[h]["prediction"]
               and s[h]["probabilities"] == pytest.approx(x[h]["probabilities"], abs=1e-5)
               for s, x in zip(served, local, strict=True) for h in ("presence", "closure", "circularity"))


def test_serve_loads_from_postgres_and_s3_and_follows_the_alias(served, trained, store, tmp_path):
    from prism.inference.predictor import Predictor
    from prism.inference.publish import register_bundle
    from prism.tracking import promote_if_better, resolve_model_uri
    from tests.helpers.bundles import fabricate_bundle
    from tests.helpers.images import sample_images

    images = sample_images(tmp_path / "images", n=2)
    info = requests.get(f"{served}/models", timeout=TIMEOUT).json()
    assert (info["name"], info["version"], info["alias"]) == (MODEL, 1, "champion")
    v1 = Predictor.from_bundle(resolve_model_uri(f"models:/{MODEL}/1", dst=tmp_path / "v1"), device="cpu")
    assert same_predictions(predict(served, images), v1.predict([str(p) for p in images], tta=True))

    # a better version of the same validation rows: registered and promoted like a second training job's
    tags = mlflow.MlflowClient().get_model_version(MODEL, "1").tags
    better = float(tags[METRIC_VALUE_TAG]) + 0.01
    bundle = fabricate_bundle(tmp_path / "v2", seed=2)
    with mlflow.start_run(experiment_id=store, run_name="second job") as run:
        mlflow.log_metric("val/macro_f1", better)
    mv = register_bundle(bundle, MODEL, run_id=run.info.run_id, metric="val/macro_f1", value=better, mode="max",
                         pip_requirements=["mlflow"], val_fingerprint=tags[VAL_FINGERPRINT_TAG])
    assert mv.version in (2, "2") and promote_if_better(MODEL, mv.version)

    resp = requests.post(f"{served}/reload", headers=AUTH, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["reloaded"], body["previous"]["version"], body["current"]["version"]) == (True, 1, 2)
    assert requests.get(f"{served}/models", timeout=TIMEOUT).json()["version"] == 2
    v2 = Predictor.from_bundle(bundle, device="cpu")
    assert same_predictions(predict(served, images), v2.predict([str(p) for p in images], tta=True))


# --------------------------------------------------------------------------------------- the race


def test_two_jobs_racing_to_promote_lose_no_version_and_stay_serialized(store, pg, s3, tmp_path):
    """Two processes each run the driver's post-training step (register a bundle, promote it) ``ROUNDS``
    times, starting each promotion together; in every round both versions beat the holder."""
    env, _ = s3
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2, timeout=300), ctx.Queue()
    procs = [ctx.Process(target=register_and_promote, daemon=True,
                         args=(w, pg, {**env, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}, RACE_MODEL, store,
                               ROUNDS, str(tmp_path / f"worker{w}"), barrier, results))
             for w in (0, 1)]
    start = time.monotonic()
    for p in procs:
        p.start()
    try:
        outputs = [results.get(timeout=540) for _ in procs]
    except queue.Empty:
        pytest.fail("a racing worker neither finished nor reported an error within 540 s")
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    print(f"[registry-pg] {ROUNDS} rounds of two racing jobs took {time.monotonic() - start:.1f} s")
    errors = [o["error"] for o in outputs if isinstance(o, dict)]
    assert not errors, "\n".join(errors)
    records = [Record(**r) for out in outputs for r in out]

    client = mlflow.MlflowClient()
    registered = {str(v.version): float(v.tags[METRIC_VALUE_TAG])
                  for v in client.search_model_versions(f"name = '{RACE_MODEL}'")}
    # no lost version: numbers 1..2*ROUNDS, each the one its job registered with its own value
    assert sorted(map(int, registered)) == list(range(1, 2 * ROUNDS + 1))
    assert {r.version: r.value for r in records} == registered
    final = str(client.get_model_version_by_alias(RACE_MODEL, "champion").version)
    assert registered[final] == max(registered.values())
    chain = check_history(records, final)
    assert len(chain) >= ROUNDS  # each round's first promotion beats what the round before left
