"""Where MLflow runs and models live: tracking URI resolution and experiments.

Prism defaults to an embedded store, a SQLite file ``mlflow.db`` in the working directory, so a
training job needs no server. Run artifacts and logged models of experiments created here go to
``<dir of mlflow.db>/mlartifacts/<experiment>`` (absolute file paths), so that
``mlflow ui --backend-store-uri sqlite:///<abs path>/mlflow.db`` shows metrics *and* artifacts.
Any other tracking URI (``http://...``, ``postgresql://...``, ``databricks``) is used as is and
the server decides where artifacts go.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.exceptions import MlflowException

DB_FILENAME = "mlflow.db"
ARTIFACTS_DIRNAME = "mlartifacts"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"

_SQLITE_PREFIX = "sqlite:///"
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
    uri = tracking_uri or os.environ.get(ENV_TRACKING_URI) or default_tracking_uri(workdir)
    db_path = sqlite_path(uri)
    if db_path is not None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


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


def get_or_create_experiment(name: str) -> str:
    """Return the id of experiment ``name`` in the current store, creating it if needed.

    With the embedded SQLite store a new experiment gets the artifact location
    ``<dir of mlflow.db>/mlartifacts/<name>``; with any other store the server's default.
    Safe against a concurrent creation of the same name (e.g. two Ray workers).
    """
    if not name or not name.strip():
        raise ValueError("experiment name must be a non-empty string, e.g. 'prism'")
    client = mlflow.MlflowClient()
    existing = client.get_experiment_by_name(name)
    if existing is None:
        root = artifact_root()
        location = None if root is None else str(root / _UNSAFE_PATH_CHARS.sub("_", name.strip("/")))
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


def browse_command(uri: str | None = None) -> str:
    """The line to show users for browsing ``uri`` (default: the current tracking URI).

    For a database or local store this is the exact ``mlflow ui --backend-store-uri ...`` command
    (absolute path, shell-quoted); for a tracking server it is the server URL itself.
    """
    uri = uri or mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return uri
    db_path = sqlite_path(uri)
    if db_path is not None:
        uri = f"{_SQLITE_PREFIX}{db_path}"
    return f"mlflow ui --backend-store-uri {shlex.quote(uri)}"
