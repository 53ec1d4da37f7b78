"""Where MLflow runs and models live: tracking URI resolution and experiments.

Prism defaults to an embedded store, a SQLite file ``mlflow.db`` in the working directory, so a
training job needs no server. Run artifacts and logged models of experiments created here go to
``<dir of mlflow.db>/mlartifacts/<experiment>`` (absolute file paths), so that
``mlflow ui --backend-store-uri sqlite:///<abs path>/mlflow.db`` shows metrics *and* artifacts.
Any other tracking URI (``http://...``, ``postgresql+psycopg2://...``, ``databricks``) is used as is: a
tracking server decides where artifacts go; a database store needs an artifact location for new
experiments (``tracking.artifact_location``, e.g. ``s3://bucket/prism``), since MLflow's own default there,
``./mlruns`` of whichever process creates the experiment, is on no other node.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

DB_FILENAME = "mlflow.db"
ARTIFACTS_DIRNAME = "mlartifacts"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"

_SQLITE_PREFIX = "sqlite:///"
_DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
_UNSAFE_PATH_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def default_tracking_uri(workdir: Path | None = None) -> str:
    """The embedded store ``sqlite:///<abs workdir or cwd>/mlflow.db``."""
    root = Path(workdir) if workdir is not None else Path.cwd()
    return f"{_SQLITE_PREFIX}{(root / DB_FILENAME).absolute()}"


def configure_tracking(tracking_uri: str | None = None, workdir: Path | None = None) -> str:
    """Point MLflow tracking and registry at one store and return its URI.

    Precedence: ``tracking_uri`` argument, then env ``MLFLOW_TRACKING_URI``, then the embedded
    default ``sqlite:///<workdir or cwd>/mlflow.db`` (absolute). The registry URI is set to the
    same store. Nothing is written except the parent folder of a SQLite file; the database itself
    is created by MLflow on first use (that takes a couple of seconds).
    """
    uri = tracking_uri or os.environ.get(ENV_TRACKING_URI)
    if not uri:
        uri = default_tracking_uri(workdir)
        if _submitted_job():
            log.warning(
                "no MLFLOW_TRACKING_URI: this `ray job submit` driver uses the embedded store %s, inside Ray's copy "
                "of the submitted folder on the head: Ray removes it with the session and no other node can open it. "
                "Submit with MLFLOW_TRACKING_URI pointing at a tracking server (the cluster.yaml head runs one; "
                "`--runtime-env-json '{\"env_vars\": {\"MLFLOW_TRACKING_URI\": ...}}'`) or set tracking.tracking_uri",
                redact_uri(uri))
    db_path = sqlite_path(uri)
    if db_path is not None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def _submitted_job() -> bool:
    from prism.runtime.ray_cluster import is_submitted_job  # importing prism.runtime imports ray

    return is_submitted_job()


def sqlite_path(uri: str) -> Path | None:
    """Absolute path of the database file for a ``sqlite:///`` URI, else None.

    ``sqlite:///rel.db`` is relative to the current directory and ``sqlite:////abs.db`` absolute,
    as in SQLAlchemy. In-memory databases (``sqlite://``, ``:memory:``) give None.
    """
    if not uri.startswith(_SQLITE_PREFIX):
        return None
    raw = urlparse(uri).path[1:]  # drop the separator after "sqlite://"; query string dropped too
    if not raw or raw == ":memory:":
        return None
    return Path(raw).absolute()


def artifact_root(uri: str | None = None) -> Path | None:
    """Folder holding experiment artifacts for the embedded store, None for any other store."""
    db_path = sqlite_path(uri or mlflow.get_tracking_uri())
    return None if db_path is None else db_path.parent / ARTIFACTS_DIRNAME


def is_database_uri(uri: str) -> bool:
    """Whether ``uri`` is a SQLAlchemy URI of a database server (``postgresql+psycopg2://…``, ``mysql://…``)."""
    return urlparse(uri).scheme.split("+", 1)[0] in _DATABASE_SCHEMES


def get_or_create_experiment(name: str, artifact_location: str | None = None) -> str:
    """Return the id of experiment ``name`` in the current store, creating it if needed.

    A new experiment keeps its artifacts at ``artifact_location`` when given (e.g. ``s3://bucket/prism``);
    otherwise, with the embedded SQLite store, at ``<dir of mlflow.db>/mlartifacts/<name>``, and with a
    tracking server where the server says. An existing experiment keeps its location. Safe against a
    concurrent creation of the same name (e.g. two Ray workers).

    Raises:
        ValueError: an empty name, a deleted experiment, or a new experiment on a database server store
            without ``artifact_location`` (MLflow would put its artifacts in this process's ``./mlruns``).
    """
    if not name or not name.strip():
        raise ValueError("experiment name must be a non-empty string, e.g. 'prism'")
    client = mlflow.MlflowClient()
    existing = client.get_experiment_by_name(name)
    if existing is None:
        root = artifact_root()
        location = artifact_location
        if location is None and root is not None:
            location = str(root / _UNSAFE_PATH_CHARS.sub("_", name.strip("/")))
        if location is None and is_database_uri(mlflow.get_tracking_uri()):
            raise ValueError(
                f"experiment {name!r} does not exist in the database store {redact_uri(mlflow.get_tracking_uri())} "
                "and no artifact location is set: MLflow would keep its artifacts in ./mlruns of this process, "
                "which no other node sees. Set tracking.artifact_location (e.g. s3://bucket/prism), or point "
                "MLFLOW_TRACKING_URI at an MLflow tracking server that serves artifacts (docs/cluster.md)"
            )
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException as exc:  # lost a race with another process creating it
            existing = client.get_experiment_by_name(name)
            if existing is None:
                raise exc from None
    if existing.lifecycle_stage == "deleted":
        raise ValueError(
            f"experiment {name!r} (id {existing.experiment_id}) is deleted; restore it with "
            f"`mlflow experiments restore --experiment-id {existing.experiment_id}` or use another name"
        )
    return existing.experiment_id


def redact_uri(uri: str) -> str:
    """``uri`` with any password replaced by ``***`` (what logs and messages may show)."""
    parsed = urlparse(uri)
    if parsed.password is None:
        return uri
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return parsed._replace(netloc=netloc).geturl()


def browse_command(uri: str | None = None) -> str:
    """The line to show users for browsing ``uri`` (default: the current tracking URI).

    For a database or local store this is the exact ``mlflow ui --backend-store-uri ...`` command
    (absolute path, shell-quoted); for a tracking server it is the server URL itself. A password in the
    URI is never shown (``***``; keep it in ``~/.pgpass`` or the URI's environment variable instead).
    """
    uri = uri or mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return redact_uri(uri)
    db_path = sqlite_path(uri)
    if db_path is not None:
        uri = f"{_SQLITE_PREFIX}{db_path}"
    return f"mlflow ui --backend-store-uri {shlex.quote(redact_uri(uri))}"
