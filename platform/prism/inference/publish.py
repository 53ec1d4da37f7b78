"""Publish a bundle: log it as a pyfunc model of a run and register it as a new model version.

The version's tags come from :func:`prism.tracking.registry.version_tags`; moving an alias is
:func:`prism.tracking.registry.promote_if_better`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import mlflow
from mlflow.entities.model_registry import ModelVersion

from prism.inference.pyfunc import log_bundle_model
from prism.tracking.registry import MODES, attached_run, version_tags

__all__ = ["register_bundle"]


def register_bundle(
    bundle_dir: Path,
    model_name: str,
    *,
    run_id: str,
    metric: str,
    value: float,
    mode: Literal["max", "min"],
    pip_requirements: list[str] | None = None,
    val_fingerprint: str | None = None,
) -> ModelVersion:
    """Log ``bundle_dir`` as pyfunc model ``model`` of run ``run_id`` and register a new version.

    ``val_fingerprint`` identifies the rows ``value`` was measured on (``TrainData.val_fingerprint``, see
    :func:`prism.data.datasets.split_fingerprint`); it is tagged ``prism.val_fingerprint`` and
    ``promote_if_better`` compares only versions with equal fingerprints. None = unknown (no tag).
    See ``log_bundle_model`` for the stored layout and ``pip_requirements``. If no run is active,
    ``run_id`` is resumed for the logging and its status restored after; if another run is active
    this is a ``RuntimeError``. Does not move any alias; see ``promote_if_better``.
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise ValueError(
            f"bundle_dir {str(bundle_dir)!r} is not a directory; pass the folder the exporter wrote"
        )
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not model_name:
        raise ValueError("model_name must be a non-empty string, e.g. 'prism-dinov2-vits14'")
    if val_fingerprint is not None and not (isinstance(val_fingerprint, str) and val_fingerprint):
        raise ValueError(f"val_fingerprint must be a non-empty string or None, got {val_fingerprint!r}")
    tags = version_tags(bundle_dir, metric, value, mode, val_fingerprint)
    with attached_run(run_id):
        info = log_bundle_model(bundle_dir, pip_requirements)
    return mlflow.register_model(info.model_uri, model_name, tags=tags)
