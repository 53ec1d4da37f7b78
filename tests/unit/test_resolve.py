"""prism.tracking.resolve: model URIs → local bundle folders, descriptions, and the errors that list what exists.

A bundle path read from an ``MLmodel`` file stays inside that model's folder: absolute paths, ``..`` and
symlinks that lead out are refused.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import mlflow.artifacts
import pytest
import yaml

from prism.inference.publish import register_bundle
from prism.tracking import (
    configure_tracking,
    describe_model,
    promote_if_better,
    resolve_model_uri,
)
from tests.helpers.bundles import BUNDLE_FILES, make_bundle, sha_of
from tests.helpers.mlflow_store import PIP, mlflow_store, new_run

RESOLVE_MODEL = "prism-resolve"

# MLflow's own SQLAlchemy store triggers this at start-up; nothing in prism can change it.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Two versions of RESOLVE_MODEL (v2 is champion): (store, run_id, {version: bundle})."""
    root = tmp_path_factory.mktemp("bundles")
    with mlflow_store(tmp_path_factory.mktemp("store")) as store:
        run_id = new_run(store.experiment_id)
        bundles = {}
        for value in (0.5, 0.7):
            bundle = make_bundle(root, str(value))
            mv = register_bundle(
                bundle,
                RESOLVE_MODEL,
                run_id=run_id,
                metric="val/accuracy",
                value=value,
                mode="max",
                pip_requirements=PIP,
            )
            promote_if_better(RESOLVE_MODEL, mv.version)
            bundles[int(mv.version)] = bundle
        yield store, run_id, bundles


@pytest.fixture
def tracking(registered):
    store, run_id, bundles = registered
    configure_tracking(store.uri)
    return run_id, bundles


@pytest.fixture
def model_dir(tracking, tmp_path) -> Path:
    """A downloaded copy of version 1 (MLmodel + artifacts/bundle), free to edit."""
    return Path(mlflow.artifacts.download_artifacts(f"models:/{RESOLVE_MODEL}/1", dst_path=str(tmp_path / "dl")))


@pytest.mark.parametrize(
    ("uri", "version"),
    [
        (f"models:/{RESOLVE_MODEL}@champion", 2),
        (f"models:/{RESOLVE_MODEL}/1", 1),
        (f"models:/{RESOLVE_MODEL}/latest", 2),
        ("runs:/{run_id}/model", 2),  # MLflow resolves to the newest model logged under that name
        ("{model_dir}", 1),
        ("{bundle_dir}", 1),
    ],
)
def test_resolve_model_uri(tracking, tmp_path, uri, version):
    run_id, bundles = tracking
    if "{model_dir}" in uri:
        model_dir = mlflow.artifacts.download_artifacts(
            f"models:/{RESOLVE_MODEL}/1", dst_path=str(tmp_path / "dl")
        )
        uri = uri.format(model_dir=model_dir)
    uri = uri.format(run_id=run_id, bundle_dir=bundles[1])
    bundle = resolve_model_uri(uri, dst=tmp_path / "resolved")
    assert bundle.is_dir() and bundle.is_absolute()
    assert {p.name for p in bundle.iterdir()} == BUNDLE_FILES
    assert sha_of(bundle) == sha_of(bundles[version])


def test_describe_model(tracking, tmp_path):
    run_id, bundles = tracking
    champion = describe_model(f"models:/{RESOLVE_MODEL}@champion")
    assert {
        k: champion[k]
        for k in (
            "name",
            "version",
            "aliases",
            "run_id",
            "metric",
            "metric_value",
            "metric_mode",
            "backbone",
            "weights_sha256",
        )
    } == {
        "name": RESOLVE_MODEL,
        "version": 2,
        "aliases": ["champion"],
        "run_id": run_id,
        "metric": "val/accuracy",
        "metric_value": 0.7,
        "metric_mode": "max",
        "backbone": "dinov2_tiny",
        "weights_sha256": sha_of(bundles[2]),
    }
    assert describe_model(f"models:/{RESOLVE_MODEL}/1")["aliases"] == []
    assert describe_model(f"runs:/{run_id}/model")["version"] == 2
    downloaded = mlflow.artifacts.download_artifacts(f"models:/{RESOLVE_MODEL}/1", dst_path=str(tmp_path))
    assert describe_model(downloaded)["version"] == 1
    local = describe_model(str(bundles[1]))
    assert (local["name"], local["version"], local["weights_sha256"]) == (None, None, sha_of(bundles[1]))


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (f"models:/{RESOLVE_MODEL}@staging", r"no alias 'staging'; aliases: champion -> v2"),
        (f"models:/{RESOLVE_MODEL}/9", r"no version '9'; versions: \[1, 2\]"),
        (
            "models:/no-such-model@champion",
            rf"no registered model 'no-such-model'; registered models: .*{RESOLVE_MODEL}",
        ),
        ("runs:/0123456789abcdef0123456789abcdef/model", "cannot download"),
        ("/no/such/dir", "no directory"),
    ],
)
def test_resolve_errors_list_what_exists(tracking, uri, message):
    with pytest.raises(ValueError, match=message):
        resolve_model_uri(uri)


def test_resolve_rejects_non_bundle_dir(tmp_path):
    with pytest.raises(ValueError, match="neither a bundle"):
        resolve_model_uri(str(tmp_path))


# ----------------------------------------------------------------- the MLmodel's bundle path stays inside


def set_bundle_path(model_dir: Path, path: str) -> None:
    """Rewrite the bundle artifact's path in ``model_dir/MLmodel`` (what a tampered model would hold)."""
    mlmodel = model_dir / "MLmodel"
    raw = yaml.safe_load(mlmodel.read_text())
    raw["flavors"]["python_function"]["artifacts"]["bundle"]["path"] = path
    mlmodel.write_text(yaml.safe_dump(raw))


@pytest.mark.parametrize(
    "path",
    ["../../etc", "artifacts/../../outside", "{outside}", "/etc"],
    ids=["dotdot", "dotdot-after-artifacts", "absolute-bundle", "absolute-etc"],
)
def test_mlmodel_bundle_path_outside_the_model_is_refused(model_dir, tmp_path, path):
    outside = make_bundle(tmp_path / "elsewhere", "outside")  # a real bundle, so only the location is wrong
    shutil.copytree(outside, model_dir.parent / "outside")
    set_bundle_path(model_dir, path.format(outside=outside))
    with pytest.raises(ValueError, match="outside the model's folder"):
        resolve_model_uri(str(model_dir))


def test_mlmodel_bundle_symlink_out_of_the_model_is_refused(model_dir, tmp_path):
    outside = make_bundle(tmp_path / "elsewhere", "outside")
    shutil.rmtree(model_dir / "artifacts" / "bundle")
    (model_dir / "artifacts" / "bundle").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside the model's folder"):
        resolve_model_uri(str(model_dir))


def test_mlmodel_bundle_path_inside_the_model_is_read(model_dir):
    (model_dir / "artifacts" / "bundle").rename(model_dir / "artifacts" / "weights")
    set_bundle_path(model_dir, "artifacts/./weights")
    bundle = resolve_model_uri(str(model_dir))
    assert bundle == (model_dir / "artifacts" / "weights").resolve()
    assert sha_of(bundle) == "sha-0.5"
