"""MLflow pyfunc model of a Prism bundle: the ``PythonModel`` and how it is logged.

The logged model stores the bundle directory as the pyfunc artifact ``bundle``; loading builds
the predictor from it with ``prism.inference.predictor.load_predictor``. ``PrismPyfunc`` holds no state when
pickled (MLflow cloudpickles the instance; the class is pickled by reference), so the model needs
``prism`` importable where it is loaded.

A pyfunc model is what ``mlflow models serve`` and Spark UDFs put behind a request, so its input is the
image itself (encoded bytes or a pixel array), never a file path or URI: a served model must not read
files a caller names. Loading reads the bundle only from inside the model's own folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types.schema import AnyType, ColSpec, Schema

from prism.tracking.registry import BUNDLE_ARTIFACT

MODEL_ARTIFACT_NAME = "model"
IMAGE_COLUMN = "image"
# Pinned into the logged model's requirements when the caller passes none (prism itself is not on an index).
DEFAULT_REQUIREMENT_DISTS = (
    "mlflow",
    "pandas",
    "numpy",
    "torch",
    "torchvision",
    "timm",
    "peft",
    "open-clip-torch",
    "safetensors",
    "pyyaml",
    "pillow",
)
UV_AUTO_DETECT_ENV = "MLFLOW_UV_AUTO_DETECT"
# Messages MLflow emits on every log_model call that do not apply here, see _log_model_settings.
_NOISE = ("Passing a Python object as `python_model`", "Failed to resolve installed pip version")

# "image" holds encoded image bytes or uint8 (H, W, 3|4) arrays; AnyType lets both through schema checks.
PRISM_SIGNATURE = ModelSignature(inputs=Schema([ColSpec(AnyType(), IMAGE_COLUMN)]))


def image_inputs(column: pd.Series) -> list[bytes | np.ndarray]:
    """The ``image`` column → what the predictor gets: encoded bytes, or ``uint8 (H, W, 3|4)`` arrays.

    ``bytearray`` / ``memoryview`` become ``bytes``. A string or path is refused with ``ValueError``: the
    model never opens a file or URL named in a request. Anything else (a nested list, a number) is
    refused too, naming the row.
    """
    images: list[bytes | np.ndarray] = []
    for row, value in zip(column.index, column, strict=True):
        if isinstance(value, str | os.PathLike):
            raise ValueError(
                f"{IMAGE_COLUMN}[{row}] is a path or URI ({str(value)[:80]!r}); the model reads no files named "
                "in its input. Send the image file's bytes (Path(p).read_bytes()) or a uint8 (H, W, 3) array"
            )
        if isinstance(value, bytes | bytearray | memoryview):
            images.append(bytes(value))
        elif isinstance(value, np.ndarray):
            images.append(value)
        else:
            raise ValueError(
                f"{IMAGE_COLUMN}[{row}] is a {type(value).__name__}; expected encoded image bytes (PNG, "
                "JPEG, ...) or a uint8 (H, W, 3) array"
            )
    return images


def _bundle_of(context: mlflow.pyfunc.PythonModelContext) -> Path:
    """The bundle folder MLflow hands over, accepted only as ``artifacts/bundle`` inside its model folder.

    MLflow joins the model folder with the path its ``MLmodel`` names, which may be absolute or climb out
    with ``..``; :func:`prism.tracking.resolve.find_bundle` re-reads that ``MLmodel`` and refuses both.
    """
    from prism.tracking.resolve import find_bundle

    given = Path(context.artifacts[BUNDLE_ARTIFACT])
    model_dir = given.parent.parent
    if ".." in given.parts or not (model_dir / "MLmodel").is_file():
        raise ValueError(
            f"the {BUNDLE_ARTIFACT!r} artifact is {str(given)!r}, not artifacts/{BUNDLE_ARTIFACT} inside an "
            "MLflow model folder; the MLmodel file was edited or the model was not logged by register_bundle"
        )
    bundle = find_bundle(model_dir)
    if bundle != given.resolve():
        raise ValueError(
            f"the {BUNDLE_ARTIFACT!r} artifact {str(given)!r} is not the bundle {str(bundle)!r} its MLmodel "
            "names; log the model again with register_bundle"
        )
    return bundle


class PrismPyfunc(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame["image"]) -> DataFrame`` over the bundle's predictor.

    Input: one row per image, column ``image`` with the image itself: encoded bytes (PNG, JPEG, ...) or a
    ``uint8 (H, W, 3|4)`` array (see :func:`image_inputs`; paths and URIs are refused).
    Output: ``predictor.to_dataframe(predictor.predict(images))``, one row per input image, in order
    (binary outputs, e.g. masks, as ``{media_type, base64}``).
    """

    predictor: Any = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from prism.inference.predictor import load_predictor

        self.predictor = load_predictor(_bundle_of(context))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        if self.predictor is None:
            raise RuntimeError(
                "PrismPyfunc.predict() before load_context(); load it with mlflow.pyfunc.load_model"
            )
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        if IMAGE_COLUMN not in model_input.columns:
            raise ValueError(
                f"input needs a column {IMAGE_COLUMN!r} of image bytes or uint8 (H, W, 3) arrays; "
                f"got columns {list(model_input.columns)}"
            )
        from prism.tasks.outputs import encode_result

        images = image_inputs(model_input[IMAGE_COLUMN])
        return self.predictor.to_dataframe(encode_result(self.predictor.predict(images)))


def default_pip_requirements() -> list[str]:
    """``dist==version`` for the installed ``DEFAULT_REQUIREMENT_DISTS`` (local labels like +cu128 dropped)."""
    reqs = []
    for dist in DEFAULT_REQUIREMENT_DISTS:
        try:
            reqs.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return reqs


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # other filesystem, or links not allowed
        shutil.copy2(src, dst)


@contextmanager
def _staged_bundle(bundle_dir: Path) -> Iterator[Path]:
    """``bundle_dir`` under the name ``bundle`` (hard links, copies across filesystems).

    MLflow stores a directory artifact under its own basename, so this keeps the stored path
    ``artifacts/bundle`` whatever the exporter called the folder. Symlinks are no use: MLflow
    rejects paths that resolve outside the copied folder.
    """
    if bundle_dir.name == BUNDLE_ARTIFACT:
        yield bundle_dir
        return
    try:
        stage = tempfile.TemporaryDirectory(prefix=".prism-stage-", dir=bundle_dir.parent)
    except OSError:  # read-only parent: copies in the system temp folder instead of links
        stage = tempfile.TemporaryDirectory(prefix="prism-stage-")
    with stage as root:
        staged = Path(root) / BUNDLE_ARTIFACT
        shutil.copytree(bundle_dir, staged, copy_function=_link_or_copy)
        yield staged


class _DropMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(noise in record.getMessage() for noise in _NOISE)


@contextmanager
def _log_model_settings() -> Iterator[None]:
    """MLflow settings for ``log_model`` here: no uv lock capture, three expected messages silenced.

    - uv: MLflow copies ``uv.lock`` + ``pyproject.toml`` of the *current directory* into the model
      when it finds a uv project; that ties the artifacts to wherever the job ran and contradicts
      the explicit ``requirements.txt``. Off unless ``MLFLOW_UV_AUTO_DETECT`` is set explicitly.
    - cloudpickle of ``python_model``: the instance is stateless and its class pickles by reference.
    - no input example: an example would make MLflow load the predictor (weights) at log time.
    - pip version unresolved: uv environments have no pip; only conda.yaml's ``pip`` line is affected.
    """
    loggers = [logging.getLogger("mlflow.pyfunc"), logging.getLogger("mlflow.utils.environment")]
    drop = _DropMessages()
    for logger in loggers:
        logger.addFilter(drop)
    uv_env_unset = UV_AUTO_DETECT_ENV not in os.environ
    if uv_env_unset:
        os.environ[UV_AUTO_DETECT_ENV] = "false"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r".*An input example was not provided", category=UserWarning
            )
            yield
    finally:
        if uv_env_unset:
            os.environ.pop(UV_AUTO_DETECT_ENV, None)
        for logger in loggers:
            logger.removeFilter(drop)


def log_bundle_model(bundle_dir: Path, pip_requirements: list[str] | None = None) -> ModelInfo:
    """Log ``bundle_dir`` as pyfunc model ``model`` of the active run; return MLflow's ModelInfo.

    MLflow 3 stores it as a LoggedModel linked to the run, not under the run's artifacts:
    ``<experiment artifact location>/models/<model_id>/artifacts/`` holding ``MLmodel``,
    ``python_model.pkl``, ``requirements.txt``, ``conda.yaml``, ``python_env.yaml`` and the
    bundle at ``artifacts/bundle/``. ``pip_requirements`` defaults to
    ``default_pip_requirements()``; it is never inferred (inference loads the model, slowly).
    """
    if mlflow.active_run() is None:
        raise RuntimeError("log_bundle_model() needs an active MLflow run; use register_bundle(run_id=...)")
    with _log_model_settings(), _staged_bundle(Path(bundle_dir)) as staged:
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_NAME,
            python_model=PrismPyfunc(),
            artifacts={BUNDLE_ARTIFACT: str(staged)},
            signature=PRISM_SIGNATURE,
            pip_requirements=default_pip_requirements() if pip_requirements is None else pip_requirements,
        )
