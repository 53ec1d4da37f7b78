"""The champion alias moves only between versions scored on the same validation rows (``prism.val_fingerprint``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from prism.config import JobConfig
from prism.data.datasets import split_fingerprint, split_labels
from prism.inference.publish import register_bundle
from prism.tasks.multihead.task import MultiHeadTask
from prism.tracking import configure_tracking, get_or_create_experiment, promote_if_better
from prism.tracking.registry import VAL_FINGERPRINT_TAG

# MLflow's own SQLAlchemy store triggers this at start-up; nothing in prism can change it.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

PIP = ["mlflow"]  # explicit and tiny: the tests never restore an environment
N = 16


# ------------------------------------------------------------------------------------ the fingerprint

def job(csv: Path, **data) -> JobConfig:
    return JobConfig.model_validate({
        "task": {"name": "multihead", "heads": [{"name": "shape", "classes": ["round", "square"]}]},
        "stages": [{"kind": "probe", "epochs": 1, "lr": {"head": 1e-3}}],
        "data": {"labels": str(csv), "check_images": False, **data},
    })


def write_dataset(folder: Path, labels: list[str]) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(len(labels)):
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(folder / "images" / f"{i}.png")
    csv = folder / "labels.csv"
    pd.DataFrame({"image": [f"images/{i}.png" for i in range(len(labels))], "shape": labels}).to_csv(csv, index=False)
    return csv


def fingerprint(csv: Path, **data) -> str:
    cfg = job(csv, **data)
    return split_labels(cfg, MultiHeadTask(cfg), use_ray=False).val_fingerprint


def test_same_data_and_split_give_the_same_fingerprint_anything_else_another(tmp_path):
    labels = ["round", "square"] * (N // 2)
    csv = write_dataset(tmp_path / "a", labels)
    base = fingerprint(csv)
    assert len(base) == 64 and base == fingerprint(csv)  # two runs, same data and split
    assert fingerprint(write_dataset(tmp_path / "copy", labels)) == base  # the same data set elsewhere
    assert fingerprint(csv, split_seed=1) != base
    assert fingerprint(csv, val_fraction=0.5) != base
    relabelled = pd.read_csv(csv)
    relabelled.loc[:, "shape"] = relabelled["shape"].map({"round": "square", "square": "round"})
    relabelled.to_csv(csv, index=False)
    assert fingerprint(csv) != base


def test_fingerprint_ignores_row_order():
    rows = pd.DataFrame({"path": ["/d/b.png", "/d/a.png", "/d/c.png"], "y_shape": [1, 0, -1]})
    assert split_fingerprint(rows) == split_fingerprint(rows.iloc[::-1].reset_index(drop=True))
    assert split_fingerprint(rows) != split_fingerprint(rows.assign(y_shape=[1, 0, 0]))


# ------------------------------------------------------------------------------------------ registry

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(workdir, experiment_id) of a module-wide SQLite store; global MLflow state reset after."""
    workdir = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mp.setenv("MLFLOW_TRACKING_URI", "unused")  # so the context restores it: MLflow exports the URI
        mp.setenv("MLFLOW_REGISTRY_URI", "unused")
        configure_tracking(f"sqlite:///{workdir}/mlflow.db")
        yield workdir, get_or_create_experiment("prism-fingerprint")
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def make_bundle(root: Path, tag: str) -> Path:
    bundle = root / f"bundle-{tag}"
    bundle.mkdir(parents=True)
    (bundle / "backbone.json").write_text(json.dumps({"name": "dinov2_tiny", "weights_sha256": f"sha-{tag}"}))
    (bundle / "config.yaml").write_text("task: classify\n")
    (bundle / "labels.json").write_text(json.dumps(["cat", "dog"]))
    (bundle / "weights.safetensors").write_bytes(b"\x00" * 64)
    return bundle


def register(store, tmp_path, name: str, value: float, fp: str | None):
    with mlflow.start_run(experiment_id=store[1]) as run:
        pass
    return register_bundle(make_bundle(tmp_path, f"{name}-{value}-{fp}"), name, run_id=run.info.run_id,
                           metric="val/accuracy", value=value, mode="max", pip_requirements=PIP,
                           val_fingerprint=fp)


def test_register_bundle_tags_the_fingerprint(store, tmp_path):
    mv = register(store, tmp_path, "prism-fp-tag", 0.5, "f" * 64)
    assert mlflow.MlflowClient().get_model_version("prism-fp-tag", mv.version).tags[VAL_FINGERPRINT_TAG] == "f" * 64
    untagged = register(store, tmp_path, "prism-fp-tag", 0.6, None)
    assert VAL_FINGERPRINT_TAG not in mlflow.MlflowClient().get_model_version("prism-fp-tag", untagged.version).tags
    with pytest.raises(ValueError, match="val_fingerprint must be a non-empty string"):
        register(store, tmp_path, "prism-fp-tag", 0.7, "")


@pytest.mark.parametrize(("held", "new", "moved"), [
    ("aaaa", "aaaa", True),    # same validation rows: the better score wins
    ("aaaa", "bbbb", False),   # other rows: not comparable
    (None, "aaaa", False),     # holder's rows unknown
    ("aaaa", None, False),     # new version's rows unknown
    (None, None, True),        # neither tagged (registered without a fingerprint): compared as before
])
def test_champion_moves_only_between_versions_scored_on_the_same_rows(store, tmp_path, caplog, held, new, moved):
    name = f"prism-fp-{held}-{new}"
    first = register(store, tmp_path, name, 0.5, held)
    assert promote_if_better(name, first.version)
    better = register(store, tmp_path, name, 0.9, new)
    with caplog.at_level(logging.WARNING, logger="prism.tracking.registry"):
        assert promote_if_better(name, better.version) is moved
    champion = mlflow.MlflowClient().get_model_version_by_alias(name, "champion").version
    assert champion == (better.version if moved else first.version)
    if not moved:
        assert "scored on other validation rows" in caplog.text
        assert f"set_alias({name!r}, 'champion', {better.version})" in caplog.text


def test_same_rows_still_need_a_better_score(store, tmp_path):
    first = register(store, tmp_path, "prism-fp-worse", 0.5, "aaaa")
    assert promote_if_better("prism-fp-worse", first.version)
    worse = register(store, tmp_path, "prism-fp-worse", 0.4, "aaaa")
    assert promote_if_better("prism-fp-worse", worse.version) is False
