"""Model registry: versions, their ranking tags, aliases (logging a bundle as a model is
:func:`prism.inference.publish.register_bundle`).

A registered version's tags say how it was ranked (``prism.metric`` / ``prism.metric_value`` /
``prism.metric_mode``) and which base weights it adapts (``prism.backbone`` /
``prism.weights_sha256`` from the bundle's ``backbone.json``) and which validation rows scored it
(``prism.val_fingerprint``, :func:`prism.data.datasets.split_fingerprint`). ``promote_if_better`` compares
those tags, and only between versions scored on the same validation rows, one promotion of a model's alias
at a time (:mod:`prism.tracking.promotion_lock`). Resolving URIs to local bundle directories lives in
``prism.tracking.resolve`` (``resolve_model_uri`` and ``describe_model`` are also importable from here).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from prism.tracking.promotion_lock import LOCK_URI_ENV, promotion_lock

__all__ = [
    "BUNDLE_ARTIFACT",
    "DEFAULT_ALIAS",
    "Promotion",
    "get_registered_model",
    "get_version",
    "get_version_by_alias",
    "promote",
    "promote_if_better",
    "set_alias",
    "version_tags",
]

log = logging.getLogger(__name__)

DEFAULT_ALIAS = "champion"
BUNDLE_ARTIFACT = "bundle"
"""Name of the pyfunc artifact that holds the bundle (``artifacts/bundle`` in a logged model)."""
MODES = ("max", "min")
METRIC_TAG = "prism.metric"
METRIC_VALUE_TAG = "prism.metric_value"
METRIC_MODE_TAG = "prism.metric_mode"
VAL_FINGERPRINT_TAG = "prism.val_fingerprint"
# backbone.json field -> version tag
BACKBONE_TAGS = {"name": "prism.backbone", "weights_sha256": "prism.weights_sha256"}


def get_registered_model(name: str, client: mlflow.MlflowClient | None = None) -> RegisteredModel:
    """The registered model ``name``; ``ValueError`` listing the registered models if unknown."""
    client = client or mlflow.MlflowClient()
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    names = sorted(m.name for m in client.search_registered_models(max_results=1000))
    raise ValueError(f"no registered model {name!r}; registered models: {', '.join(names) or '(none)'}")


def get_version(name: str, version: int | str, client: mlflow.MlflowClient | None = None) -> ModelVersion:
    """Version ``version`` of model ``name``; ``ValueError`` listing the existing versions if unknown."""
    client = client or mlflow.MlflowClient()
    get_registered_model(name, client)
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    raise ValueError(f"model {name!r} has no version {version!r}; versions: {versions}")


def get_version_by_alias(name: str, alias: str, client: mlflow.MlflowClient | None = None) -> ModelVersion:
    """The version of ``name`` holding ``alias``; ``ValueError`` listing the model's aliases if unset."""
    client = client or mlflow.MlflowClient()
    aliases = get_registered_model(name, client).aliases or {}
    if alias not in aliases:
        listed = ", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items())) or "(none)"
        raise ValueError(f"model {name!r} has no alias {alias!r}; aliases: {listed}")
    return client.get_model_version(name, str(aliases[alias]))


def version_tags(bundle_dir: Path, metric: str, value: float, mode: str,
                 val_fingerprint: str | None = None) -> dict[str, str]:
    """Tags for a new version: ranking metric, the validation split's fingerprint if given, and backbone
    name / weights hash if ``backbone.json`` has them."""
    tags = {METRIC_TAG: metric, METRIC_VALUE_TAG: repr(float(value)), METRIC_MODE_TAG: mode}
    if val_fingerprint is not None:
        tags[VAL_FINGERPRINT_TAG] = val_fingerprint
    backbone_json = Path(bundle_dir) / "backbone.json"
    if backbone_json.is_file():
        info = json.loads(backbone_json.read_text())
        tags.update(
            {tag: str(info[field]) for field, tag in BACKBONE_TAGS.items() if info.get(field) is not None}
        )
    return tags


@contextmanager
def attached_run(run_id: str) -> Iterator[None]:
    """Make ``run_id`` the active run (MLflow links logged models to it), restoring its status after."""
    active = mlflow.active_run()
    if active is not None:
        if active.info.run_id != run_id:
            raise RuntimeError(
                f"register_bundle(run_id={run_id!r}) while run {active.info.run_id} is active; "
                "call it inside that run's `with mlflow.start_run(run_id=...)` block or after it ended"
            )
        yield
        return
    client = mlflow.MlflowClient()
    try:
        status = client.get_run(run_id).info.status
    except MlflowException as exc:
        raise ValueError(f"unknown run {run_id!r} in {mlflow.get_tracking_uri()}: {exc.message}") from exc
    try:
        with mlflow.start_run(run_id=run_id):
            yield
    finally:
        if client.get_run(run_id).info.status != status:
            client.update_run(run_id, status=status)


def _ranking(mv: ModelVersion) -> tuple[str, float, str] | None:
    tags = mv.tags or {}
    try:
        return tags[METRIC_TAG], float(tags[METRIC_VALUE_TAG]), tags[METRIC_MODE_TAG]
    except (KeyError, ValueError):
        return None


def set_alias(model_name: str, alias: str, version: int | str) -> None:
    """Point ``alias`` of ``model_name`` at ``version`` (``ValueError`` for unknown model/version/bad alias).

    Holds the promotion lock of ``(model_name, alias)`` (:mod:`prism.tracking.promotion_lock`), so a
    deliberate move is never undone by a promotion that compared against the holder before it.
    """
    client = mlflow.MlflowClient()
    get_version(model_name, version, client)
    with promotion_lock(mlflow.get_registry_uri(), model_name, alias):
        try:
            client.set_registered_model_alias(model_name, alias, str(version))
        except MlflowException as exc:
            if exc.error_code != "INVALID_PARAMETER_VALUE":
                raise
            raise ValueError(f"invalid alias {alias!r} for model {model_name!r}: {exc.message}") from exc


@dataclass(frozen=True)
class Promotion:
    """What one :func:`promote` did: ``version`` was compared with ``previous`` (the version holding the
    alias at that moment, None if none did) and the alias ``moved`` to ``version`` or not. ``lock`` is the
    kind of promotion lock held (``"postgresql"``, ``"file"``, None: the store has none)."""

    model_name: str
    alias: str
    version: str
    previous: str | None
    moved: bool
    lock: str | None


def promote(model_name: str, version: int | str, alias: str = DEFAULT_ALIAS) -> Promotion:
    """Move ``alias`` to ``version`` if it beats the version holding it (rules: :func:`promote_if_better`).

    Reading the holder, comparing and moving the alias happen under the promotion lock of
    ``(model_name, alias)`` (:func:`~prism.tracking.promotion_lock.promotion_lock`): promotions racing on
    one store are serialized, each compares against the version the previous one left holding the alias.
    Where the store has no lock (an MLflow tracking server over ``http(s)://`` without
    ``PRISM_PROMOTION_LOCK_URI``) the alias is re-read after moving it and a warning names any promotion
    that moved it meanwhile: that is detection, not prevention.
    """
    client = mlflow.MlflowClient()
    new = get_version(model_name, version, client)
    ranking = _ranking(new)
    if ranking is None:
        raise ValueError(
            f"version {version} of {model_name!r} has no {METRIC_TAG}/{METRIC_VALUE_TAG}/{METRIC_MODE_TAG} tags; "
            "register it with register_bundle() or move the alias with set_alias()"
        )
    metric, value, _ = ranking
    if not math.isfinite(value):
        log.warning("%s v%s has %s=%s; %r not moved", model_name, new.version, metric, value, alias)
        return Promotion(model_name, alias, str(new.version), None, False, None)
    with promotion_lock(mlflow.get_registry_uri(), model_name, alias) as lock:
        previous, moved = _compare_and_set(client, model_name, new, ranking, alias)
    if moved and lock is None:
        holder = (get_registered_model(model_name, client).aliases or {}).get(alias)
        if holder is not None and str(holder) != str(new.version):
            log.warning(
                "%s: %r was moved to v%s by another promotion right after this one moved it to v%s; this "
                "store offers no promotion lock, so the two were not serialized (set %s to the tracking "
                "server's database, see prism.tracking.promotion_lock)",
                model_name, alias, holder, new.version, LOCK_URI_ENV,
            )
    return Promotion(model_name, alias, str(new.version), previous, moved, lock)


def _compare_and_set(client: mlflow.MlflowClient, model_name: str, new: ModelVersion,
                     ranking: tuple[str, float, str], alias: str) -> tuple[str | None, bool]:
    """``(version holding alias when read, whether alias moved to new)``: the section the lock guards."""
    metric, value, mode = ranking
    aliases = get_registered_model(model_name, client).aliases or {}
    previous = None if alias not in aliases else str(aliases[alias])
    if previous is not None:
        current = client.get_model_version(model_name, previous)
        if current.version == new.version:
            return previous, False
        held = _ranking(current)
        if held is None or held[0] != metric:
            log.warning(
                "%s v%s holds %r but is not ranked on %r; not moved (use set_alias to move it)",
                model_name,
                current.version,
                alias,
                metric,
            )
            return previous, False
        new_fp = (new.tags or {}).get(VAL_FINGERPRINT_TAG)
        held_fp = (current.tags or {}).get(VAL_FINGERPRINT_TAG)
        if new_fp != held_fp:
            log.warning(
                "%s v%s holds %r but was scored on other validation rows than v%s (%s: v%s %s, v%s %s), so "
                "their %r values are not comparable; not moved. To move it deliberately, e.g. after scoring "
                "both with `prism evaluate --labels` on the same CSV: set_alias(%r, %r, %s)",
                model_name, current.version, alias, new.version, VAL_FINGERPRINT_TAG,
                current.version, (held_fp or "none")[:12], new.version, (new_fp or "none")[:12],
                metric, model_name, alias, new.version,
            )
            return previous, False
        if math.isfinite(held[1]) and not (value > held[1] if mode == "max" else value < held[1]):
            return previous, False
    client.set_registered_model_alias(model_name, alias, str(new.version))
    log.info("%s: %r -> v%s (%s=%s)", model_name, alias, new.version, metric, value)
    return previous, True


def promote_if_better(model_name: str, version: int | str, alias: str = DEFAULT_ALIAS) -> bool:
    """Move ``alias`` to ``version`` if it beats the version holding it; return whether it moved.

    Compares the ``prism.metric*`` tags written by ``register_bundle`` using the new version's
    mode (``max``: higher wins, ``min``: lower wins). No holder -> promote; tie, same version, a
    non-finite new value, a holder ranked on a different metric, or a holder whose
    ``prism.val_fingerprint`` differs from the new version's (one of them lacking it counts as
    different) -> not moved (warning for the last three: use ``set_alias`` to move it deliberately).
    Two versions that both lack the tag (registered without ``val_fingerprint``) are compared.
    Concurrent promotions of one model and alias are serialized (see :func:`promote`, which also says
    which version was compared against).
    """
    return promote(model_name, version, alias).moved


def __getattr__(name: str):  # resolve_model_uri / describe_model live in prism.tracking.resolve
    if name in ("resolve_model_uri", "describe_model"):
        from prism.tracking import resolve

        return getattr(resolve, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
