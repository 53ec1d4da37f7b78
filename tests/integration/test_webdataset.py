"""``data.source: webdataset`` on a local Ray: shards streamed by ``read_webdataset`` from local paths,
brace patterns and a local S3-compatible server (moto, started here), a stable split, bad samples."""

from __future__ import annotations

from collections import Counter

import pytest
from ray.train import UserCallback

from prism.config import JobConfig
from prism.data.webdataset import in_val_split
from prism.tasks import build_task
from tests.helpers.s3 import s3_server
from tests.helpers.shards import CLASSES, members, rewrite, sketch_shards

pytestmark = pytest.mark.ray


def job(train, val=None, **data) -> JobConfig:
    return JobConfig.model_validate({
        "task": {"name": "classify", "classes": CLASSES}, "backbone": {"name": "dinov2_tiny", "img_size": 28},
        "stages": [{"kind": "probe", "epochs": 1, "lr": {"head": 1e-3}}],
        "data": {"source": "webdataset", "webdataset": {"train": train, "val": val}, "val_fraction": 0.25, **data}})


def labels(ds) -> Counter:
    return Counter(int(y) for y in ds.to_pandas()["y_label"])


def expected(shards, fraction: float) -> tuple[Counter, Counter]:
    """Label counts of the train and val sides, read from the tars with the standard library."""
    train, val = Counter(), Counter()
    for shard in shards:
        for key, m in members(shard).items():
            (val if in_val_split(str(shard), key, fraction) else train)[int(m["cls"])] += 1
    return train, val


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return sketch_shards(tmp_path_factory.mktemp("wds"), n=60, per_shard=16)


def test_brace_pattern_streams_every_sample_once_with_a_stable_split(ray_local, shards):
    cfg = job(shards.pattern)
    data = build_task(cfg).build_datasets(28)
    assert data.n_train is None and "4 training shard(s)" in data.describe()
    want_train, want_val = expected(shards.shards, 0.25)
    assert labels(data.train) == want_train and labels(data.val) == want_val
    assert sum(want_train.values()) + sum(want_val.values()) == 60 and sum(want_val.values()) > 5
    batch = data.train.take_batch(8)
    assert batch["image"].shape == (8, 28, 28, 3) and batch["image"].dtype.name == "uint8"
    assert set(batch) == {"image", "y_label"}
    assert build_task(cfg).build_datasets(28).val_fingerprint == data.val_fingerprint  # same split, same print


def test_separate_validation_shards(ray_local, shards, tmp_path):
    val = sketch_shards(tmp_path, n=12, per_shard=12, prefix="val", seed=1)
    data = build_task(job([str(p) for p in shards.shards], val.pattern)).build_datasets(28)
    assert sum(labels(data.val).values()) == 12 and sum(labels(data.train).values()) == 60


def test_bad_samples_name_shard_and_key_or_are_skipped_and_counted(ray_local, tmp_path):
    bad = sketch_shards(tmp_path, n=20, per_shard=10)
    key = next(iter(members(bad.shards[1])))
    rewrite(bad.shards[1], {key: {"png": b"\x89PNG broken"}})
    with pytest.raises(Exception, match=rf"train-000001\.tar: sample '{key}': undecodable image"):
        build_task(job(bad.pattern)).build_datasets(28).train.materialize()
    data = build_task(job(bad.pattern, on_bad_rows="skip")).build_datasets(28)
    n = sum(labels(data.train).values()) + sum(labels(data.val).values())
    assert n == 19
    table = data.skipped_while_streaming()
    assert table[["key", "reason"]].values.tolist() == [[key, table["reason"][0]]]
    assert table["shard"][0].endswith("train-000001.tar") and "undecodable image" in table["reason"][0]


def test_shards_and_csv_images_on_a_local_s3_server(ray_local, shards, monkeypatch, tmp_path):
    """The shards, and the images of a labels CSV that lists them by URI, in a bucket of moto's S3 server;
    the reads run under the runtime env a job would get
    (``ray job submit --runtime-env-json '{"env_vars": {"AWS_ENDPOINT_URL": …}}'``)."""
    import pandas as pd
    import ray

    with s3_server("prism-shards") as (env, s3):
        for p in shards.shards:
            s3.upload_file(str(p), "prism-shards", f"sketches/{p.name}")
        pattern = "s3://prism-shards/sketches/train-{000000..000003}.tar"
        local = pd.read_csv(shards.shards[0].parent.parent / "src-train" / "labels.csv")
        for rel in local["image"]:
            s3.upload_file(str(shards.shards[0].parent.parent / "src-train" / rel), "prism-shards", f"png/{rel}")
        csv = tmp_path / "uris.csv"
        local.assign(image=[f"s3://prism-shards/png/{rel}" for rel in local["image"]]).to_csv(csv, index=False)

        @ray.remote(num_cpus=0, runtime_env={"env_vars": env})
        def read(pattern: str) -> tuple[dict, dict, int]:
            data = build_task(job(pattern)).build_datasets(28)
            from_csv = build_task(JobConfig.model_validate({
                **job(pattern).model_dump(mode="json"), "data": {"labels": str(csv), "val_fraction": 0.25}}))
            csv_data = from_csv.build_datasets(28)  # every image checked (decoded) in Ray tasks first
            n_csv = len(csv_data.train.to_pandas()) + len(csv_data.val.to_pandas())
            return dict(labels(data.train)), dict(labels(data.val)), n_csv

        train, val, n_csv = ray.get(read.remote(pattern))
        want_train, want_val = expected(shards.shards, 0.25)
        assert Counter(train) == want_train and Counter(val) == want_val  # same split as on local disk
        assert n_csv == 60  # every URI found and decoded from the bucket

        for k, v in env.items():  # the driver's own check of the shards, in the driver's environment
            monkeypatch.setenv(k, v)
        with pytest.raises(FileNotFoundError, match=r"6 of 10 shard\(s\) not found:\n  s3://prism-shards/"):
            build_task(job("s3://prism-shards/sketches/train-{000000..000009}.tar")).build_datasets(28)

class FailedAttempts(UserCallback):
    """Ray Train callback (it runs on the controller): one line in ``path`` per failed attempt."""

    def __init__(self, path):
        self.path = str(path)

    def after_exception(self, run_context, worker_exceptions):
        with open(self.path, "a") as f:
            f.write(f"{sorted(worker_exceptions)}\n")


def test_a_bad_sample_stops_training_once_with_its_own_message(ray_local, workdir, tmp_path):
    """A sample that fails while a worker streams it ends the run at the first attempt (Ray Train's
    restarts are for lost workers: each would read up to the same sample again), and the driver raises the
    data error itself, not Ray Train's WorkerGroupError with tracebacks."""
    from prism.data.table import BadRowsError
    from prism.engine.driver import run_training

    bad = sketch_shards(tmp_path, n=20, per_shard=10)
    key = next(iter(members(bad.shards[1])))
    rewrite(bad.shards[1], {key: {"png": b"\x89PNG broken"}})
    cfg = job(bad.pattern, progress_bars=False).model_copy(deep=True)
    cfg.train.num_workers, cfg.train.cpus_per_worker, cfg.train.max_failures = 1, 0.5, 2
    cfg.train.storage_path, cfg.tracking.model_name = str(tmp_path / "runs"), None
    attempts = tmp_path / "attempts.txt"
    with pytest.raises(BadRowsError) as caught:
        run_training(cfg, extra_callbacks=[FailedAttempts(attempts)])
    said = str(caught.value)
    assert said.startswith("1 bad sample(s):\n") and f"train-000001.tar: sample '{key}': undecodable image" in said
    assert "Traceback" not in said and "Failed to apply UDF" not in said and "BytesIO" not in said
    assert attempts.read_text().splitlines() == ["[0]"]  # max_failures=2, yet one attempt
