"""Turn a model URI into a local bundle directory, and describe what a URI points at.

Accepted URIs::

    models:/NAME@ALIAS       models:/NAME/VERSION      models:/NAME/latest
    runs:/RUN_ID/model       models:/m-<logged model id>   (other MLflow artifact URIs too)
    /path/to/bundle          (a bundle itself: has backbone.json or config.yaml)
    /path/to/mlflow_model    (a downloaded MLflow model: MLmodel + artifacts/bundle/)

A downloaded MLflow 3 pyfunc model looks like::

    MLmodel  python_model.pkl  conda.yaml  python_env.yaml  requirements.txt  registered_model_meta
    artifacts/bundle/{manifest.json, backbone.json, config.yaml, labels.json, metrics.json, weights.safetensors}
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
import yaml
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from prism.tracking.registry import (
    BACKBONE_TAGS,
    BUNDLE_ARTIFACT,
    METRIC_MODE_TAG,
    METRIC_TAG,
    METRIC_VALUE_TAG,
    get_registered_model,
    get_version,
    get_version_by_alias,
)

URI_HELP = (
    "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model, or a local bundle or "
    "downloaded MLflow model directory"
)
BUNDLE_MARKERS = ("backbone.json", "config.yaml")
REGISTERED_META = "registered_model_meta"  # written by MLflow into models downloaded from the registry


def registry_version(uri: str) -> ModelVersion | None:
    """The registered version a ``models:/`` URI names, or None for ``models:/m-<id>`` (a LoggedModel)."""
    body = uri.removeprefix("models:/").strip("/")
    if "@" in body:
        name, alias = body.rsplit("@", 1)
        return get_version_by_alias(name, alias)
    if "/" not in body:
        return None
    name, ref = body.rsplit("/", 1)
    if ref.isdigit():
        return get_version(name, ref)
    if ref == "latest":
        client = mlflow.MlflowClient()
        get_registered_model(name, client)
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise ValueError(f"model {name!r} has no versions yet; register one with register_bundle()")
        return max(versions, key=lambda v: int(v.version))
    raise ValueError(f"cannot read {uri!r}: expected {URI_HELP}")


def bundle_inside(model_dir: Path, rel: object) -> Path:
    """``model_dir / rel`` for the bundle path ``rel`` an ``MLmodel`` names; it must stay inside ``model_dir``.

    ``rel`` comes from a file anyone who can write to the registry controls, so an absolute path, ``..``
    that climbs out, or a symlink that leads out of the model's folder raises ``ValueError``: loading never
    reads files outside the downloaded model.
    """
    if not isinstance(rel, str) or not rel.strip():
        raise ValueError(
            f"MLmodel of {str(model_dir)!r} names the bundle artifact as {rel!r}; expected a relative path "
            f"such as 'artifacts/{BUNDLE_ARTIFACT}'. Log the model again with register_bundle"
        )
    root = Path(model_dir).resolve()
    bundle = (root / rel).resolve()
    if Path(rel).is_absolute() or not bundle.is_relative_to(root):
        raise ValueError(
            f"MLmodel of {str(model_dir)!r} points the bundle at {rel!r}, outside the model's folder; only a "
            f"path inside it (e.g. 'artifacts/{BUNDLE_ARTIFACT}') is read. The model was not logged by "
            "register_bundle or has been tampered with: log it again"
        )
    return bundle


def find_bundle(model_dir: Path) -> Path:
    """The bundle directory inside ``model_dir`` (itself, or the pyfunc artifact named in MLmodel).

    The artifact path read from ``MLmodel`` must stay inside ``model_dir`` (see :func:`bundle_inside`).
    """
    model_dir = Path(model_dir)
    mlmodel = model_dir / "MLmodel"
    if mlmodel.is_file():
        flavor = (yaml.safe_load(mlmodel.read_text()).get("flavors") or {}).get("python_function") or {}
        rel = ((flavor.get("artifacts") or {}).get(BUNDLE_ARTIFACT) or {}).get(
            "path", f"artifacts/{BUNDLE_ARTIFACT}"
        )
        bundle = bundle_inside(model_dir, rel)
        if bundle.is_dir():
            return bundle
        raise ValueError(
            f"MLflow model at {str(model_dir)!r} has no {rel!r}; it was not logged by register_bundle"
        )
    if any((model_dir / marker).is_file() for marker in BUNDLE_MARKERS):
        return model_dir
    raise ValueError(
        f"{str(model_dir)!r} is neither a bundle (no {' / '.join(BUNDLE_MARKERS)}) nor an MLflow model "
        "(no MLmodel)"
    )


def _local_dir(uri: str) -> Path | None:
    if uri.startswith("file://"):
        path = Path(uri.removeprefix("file://"))
    elif ":/" in uri:
        return None
    else:
        path = Path(uri)
    if not path.is_dir():
        raise ValueError(f"no directory {str(path)!r}; expected {URI_HELP}")
    return path.absolute()


def resolve_model_uri(uri: str, dst: Path | None = None) -> Path:
    """Local path of the bundle directory ``uri`` points at, downloading it if needed.

    Registry and run URIs are downloaded with ``mlflow.artifacts.download_artifacts`` into
    ``dst`` and the path of ``<model>/artifacts/bundle`` is returned; local directories are
    returned in place. Without ``dst``, MLflow picks the place: a fresh temporary directory, or,
    when the artifact store is a local folder (the embedded default), the stored model itself,
    with no copy; treat the result as read-only. Unknown model names, versions or aliases raise
    ``ValueError`` listing what exists.
    """
    local = _local_dir(uri)
    if local is not None:
        return find_bundle(local)
    source = uri
    if uri.startswith("models:/"):
        mv = registry_version(uri)
        if mv is not None:
            source = f"models:/{mv.name}/{mv.version}"
    if dst is not None:
        Path(dst).mkdir(parents=True, exist_ok=True)
    try:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=None if dst is None else str(dst)
        )
    except MlflowException as exc:
        raise ValueError(f"cannot download {uri!r} from {mlflow.get_tracking_uri()}: {exc.message}") from exc
    return find_bundle(Path(path))


def _describe_version(mv: ModelVersion, uri: str) -> dict[str, Any]:
    tags = dict(mv.tags or {})
    value = tags.get(METRIC_VALUE_TAG)
    aliases = mv.aliases
    if aliases is None:
        aliases = [
            a for a, v in (get_registered_model(mv.name).aliases or {}).items() if str(v) == str(mv.version)
        ]
    return {
        "uri": uri,
        "name": mv.name,
        "version": int(mv.version),
        "aliases": sorted(aliases),
        "run_id": mv.run_id,
        "source": mv.source,
        "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC).isoformat(),
        "metric": tags.get(METRIC_TAG),
        "metric_value": None if value is None else float(value),
        "metric_mode": tags.get(METRIC_MODE_TAG),
        "backbone": tags.get(BACKBONE_TAGS["name"]),
        "weights_sha256": tags.get(BACKBONE_TAGS["weights_sha256"]),
        "tags": tags,
    }


def _describe_unregistered(uri: str, run_id: str | None = None, bundle: Path | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {}
    if bundle is not None and (bundle / "backbone.json").is_file():
        info = json.loads((bundle / "backbone.json").read_text())
    return {
        "uri": uri,
        "name": None,
        "version": None,
        "aliases": [],
        "run_id": run_id,
        "source": uri,
        "created": None,
        "metric": None,
        "metric_value": None,
        "metric_mode": None,
        "backbone": info.get("name"),
        "weights_sha256": info.get("weights_sha256"),
        "tags": {},
    }


def describe_model(uri: str) -> dict[str, Any]:
    """What ``uri`` points at, for listings and a ``/models`` endpoint.

    Keys: uri, name, version, aliases, run_id, source, created (ISO 8601, UTC), metric,
    metric_value, metric_mode, backbone, weights_sha256, tags. For a run URI the newest version
    registered from that run is described; a local bundle that was never registered has
    name/version None and backbone fields read from its ``backbone.json``.
    """
    if uri.startswith("models:/"):
        mv = registry_version(uri)
        return _describe_unregistered(uri) if mv is None else _describe_version(mv, uri)
    if uri.startswith("runs:/"):
        run_id = uri.removeprefix("runs:/").split("/", 1)[0]
        versions = mlflow.MlflowClient().search_model_versions(f"run_id = '{run_id}'")
        if versions:
            return _describe_version(max(versions, key=lambda v: int(v.version)), uri)
        return _describe_unregistered(uri, run_id=run_id)
    local = _local_dir(uri)
    if local is None:
        return _describe_unregistered(uri)
    meta = local / REGISTERED_META
    if meta.is_file():
        reg = yaml.safe_load(meta.read_text()) or {}
        if reg.get("model_name") and reg.get("model_version"):
            return _describe_version(get_version(reg["model_name"], reg["model_version"]), uri)
    return _describe_unregistered(uri, bundle=find_bundle(local))
