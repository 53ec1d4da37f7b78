"""The MLflow pyfunc flavour of a real (tiny, untrained) bundle: it predicts what the Predictor predicts.

Its input is the image itself (encoded bytes or a uint8 array): a path or URI in a request is refused, and
a model whose ``MLmodel`` points the bundle outside the model's folder does not load.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import mlflow
import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.exceptions import MlflowException
from PIL import Image

from prism.inference.predictor import Predictor
from prism.inference.pyfunc import log_bundle_model
from prism.tracking import configure_tracking, set_alias
from tests.helpers.bundles import fabricate_bundle
from tests.helpers.images import sample_images
from tests.helpers.mlflow_store import PIP, mlflow_store

# MLflow's own SQLAlchemy store triggers this at start-up; nothing in prism can change it.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


MODEL = "prism-pyfunc"


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """(store, bundle folder, model URI) of a fabricated bundle logged with ``log_bundle_model``.

    The logged model is also registered as ``MODEL`` v1 with the alias ``champion``.
    """
    bundle = fabricate_bundle(tmp_path_factory.mktemp("src") / "trained", seed=3)
    with mlflow_store(tmp_path_factory.mktemp("store")) as store:
        with mlflow.start_run(experiment_id=store.experiment_id):
            info = log_bundle_model(bundle, pip_requirements=PIP)
        mlflow.register_model(info.model_uri, MODEL)
        set_alias(MODEL, "champion", 1)
        yield store, bundle, info.model_uri


@pytest.fixture(scope="module")
def model(logged):
    """The pyfunc model as a registry user loads it: by alias."""
    configure_tracking(logged[0].uri)
    return mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return sample_images(tmp_path_factory.mktemp("images"), n=3)


def frame(values: list) -> pd.DataFrame:
    """One row per input; an object column, so arrays stay whole cells."""
    return pd.DataFrame({"image": pd.Series(values, dtype=object)})


def test_pyfunc_predicts_what_the_predictor_predicts(logged, model, images):
    _, bundle, _ = logged
    rgb = np.asarray(Image.open(images[1]).convert("RGB"))
    rgba = np.asarray(Image.open(images[2]).convert("RGBA"))
    inputs = [images[0].read_bytes(), rgb, rgba, bytearray(images[2].read_bytes())]
    got = model.predict(frame(inputs))
    predictor = Predictor.from_bundle(bundle)
    expected = predictor.to_dataframe(predictor.predict([images[0].read_bytes(), rgb, rgba,
                                                         images[2].read_bytes()]))
    assert len(got) == 4
    pd.testing.assert_frame_equal(got, expected, check_exact=False, atol=1e-5)
    # the same image as bytes or as its RGBA array gives the same answer
    pd.testing.assert_frame_equal(got.drop(columns="image").iloc[[2]].reset_index(drop=True),
                                  got.drop(columns="image").iloc[[3]].reset_index(drop=True),
                                  check_exact=False, atol=1e-5)


@pytest.mark.parametrize("as_path", [str, Path, lambda p: p.as_uri()], ids=["str", "Path", "file-uri"])
def test_pyfunc_refuses_paths_and_uris(model, images, as_path):
    marker = images[0]
    with pytest.raises(ValueError, match=r"image\[1\] is a path or URI .*reads no files.*read_bytes"):
        model.predict(frame([marker.read_bytes(), as_path(marker)]))


def test_pyfunc_input_errors(model, images):
    with pytest.raises(ValueError, match=r"image\[0\] is a int; expected encoded image bytes"):
        model.predict(frame([7]))
    with pytest.raises(MlflowException, match="image"):
        model.predict(pd.DataFrame({"path": [images[0].read_bytes()]}))


@pytest.mark.parametrize("relative", [True, False], ids=["dotdot", "absolute"])
def test_pyfunc_refuses_a_bundle_path_outside_the_model(logged, tmp_path, relative):
    """MLflow joins the model folder with the MLmodel's path as is; load_context refuses what lands outside."""
    store, bundle, uri = logged
    configure_tracking(store.uri)
    model_dir = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "dl")))
    outside = Path(shutil.copytree(bundle, tmp_path / "outside"))  # loadable: only its place is wrong
    rel = os.path.relpath(outside, model_dir) if relative else str(outside)
    assert (model_dir / rel).resolve() == outside.resolve() and (".." in rel) is relative
    mlmodel = model_dir / "MLmodel"
    raw = yaml.safe_load(mlmodel.read_text())
    raw["flavors"]["python_function"]["artifacts"]["bundle"]["path"] = rel
    mlmodel.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="not artifacts/bundle inside an MLflow model folder"):
        mlflow.pyfunc.load_model(str(model_dir))
