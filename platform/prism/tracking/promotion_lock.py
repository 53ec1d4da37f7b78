"""One promotion at a time per (model, alias): the lock around ``promote_if_better``'s compare-and-set.

Promoting reads the version that holds an alias, compares, then moves the alias. Two jobs finishing
together would otherwise both compare against the same old holder, and the worse one could end up holding
the alias. :func:`promotion_lock` serializes that section for one ``(model name, alias)`` across processes
and machines, with what the store itself offers:

==============================  ===================================================================
lock URI                        lock
==============================  ===================================================================
``postgresql[+driver]://...``   ``pg_advisory_xact_lock(key)`` in a transaction of its own connection
                                (released at commit / rollback, or when the connection drops)
``sqlite:///path/mlflow.db``    ``flock`` on ``path/mlflow.db.locks/<key>.lock`` (every process that
                                opens this database runs on this machine, or shares its file system)
anything else (``http(s)://``,  none: an MLflow tracking server has no lock or compare-and-set in its
``databricks``, MySQL, ...)     API. Set ``PRISM_PROMOTION_LOCK_URI`` to the server's PostgreSQL
                                database (or a ``sqlite:///`` path on a file system every promoting
                                process shares) to serialize promotions there too
==============================  ===================================================================

The lock URI is env ``PRISM_PROMOTION_LOCK_URI`` when set, else the registry URI. ``key`` is a signed
64-bit hash of ``model\\0alias``: other models and aliases never wait on each other. A lock not acquired
within ``timeout_s`` raises ``TimeoutError``; the lock is released on every path out of the ``with`` block,
exceptions included, and no connection outlives it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prism.tracking.store import sqlite_path

__all__ = ["LOCK_URI_ENV", "lock_key", "lock_kind", "promotion_lock"]

log = logging.getLogger(__name__)

LOCK_URI_ENV = "PRISM_PROMOTION_LOCK_URI"
DEFAULT_TIMEOUT_S = 300.0
_POLL_MAX_S = 0.2


def lock_key(model_name: str, alias: str) -> int:
    """The signed 64-bit key of ``(model_name, alias)`` (PostgreSQL advisory locks take a ``bigint``)."""
    digest = hashlib.sha256(f"{model_name}\0{alias}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_uri(registry_uri: str) -> str:
    """Where promotions are serialized: env ``PRISM_PROMOTION_LOCK_URI`` if set, else ``registry_uri``."""
    return os.environ.get(LOCK_URI_ENV) or registry_uri


def lock_kind(uri: str) -> str | None:
    """``"postgresql"``, ``"file"`` (a SQLite database file) or None (no lock available) for a lock URI."""
    if sqlite_path(uri) is not None:
        return "file"
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme.split("+", 1)[0] == "postgresql":
        return "postgresql"
    return None


@contextmanager
def promotion_lock(registry_uri: str, model_name: str, alias: str,
                   timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[str | None]:
    """Hold the promotion lock of ``(model_name, alias)`` for the block; yields the lock's kind.

    The kind is ``"postgresql"``, ``"file"``, or None when the store offers no lock (the block then runs
    unserialized; see the module docstring). ``TimeoutError`` if another promotion holds the lock for more
    than ``timeout_s`` seconds.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s!r}")
    uri = lock_uri(registry_uri)
    kind = lock_kind(uri)
    key = lock_key(model_name, alias)
    what = f"promotion lock of {model_name!r} alias {alias!r}"
    if kind == "file":
        with _file_lock(_lock_file(sqlite_path(uri), key), timeout_s, what):
            yield kind
    elif kind == "postgresql":
        with _advisory_lock(uri, key, timeout_s, what):
            yield kind
    else:
        log.debug("%s: no lock on %s, promotion not serialized", what, uri)
        yield None


def _lock_file(db_path: Path, key: int) -> Path:
    return db_path.with_name(db_path.name + ".locks") / f"{key & 0xFFFFFFFFFFFFFFFF:016x}.lock"


@contextmanager
def _file_lock(path: Path, timeout_s: float, what: str) -> Iterator[None]:
    """Exclusive ``flock`` on ``path`` (created if missing, never removed: removing a lock file races).

    ``flock`` belongs to the open file, so threads of one process exclude each other too; the kernel
    drops it when the process dies.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline, delay = time.monotonic() + timeout_s, 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{what} ({path}) still held by another process after {timeout_s:g}s; "
                                       "a promotion is stuck, or raise the timeout") from None
                time.sleep(delay)
                delay = min(delay * 2, _POLL_MAX_S)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def _advisory_lock(uri: str, key: int, timeout_s: float, what: str) -> Iterator[None]:
    """``pg_advisory_xact_lock(key)`` in a transaction on a connection of its own (no pool: closed after).

    ``lock_timeout`` bounds the wait; the transaction ends (commit, or rollback on an exception in the
    block) when the block does, which releases the lock.
    """
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    engine = sa.create_engine(uri, poolclass=NullPool)
    try:
        with engine.connect() as conn, conn.begin():
            conn.execute(sa.text("SELECT set_config('lock_timeout', :ms, true)"),
                         {"ms": f"{max(1, round(timeout_s * 1000))}ms"})
            try:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            except sa.exc.OperationalError as exc:
                code = getattr(exc.orig, "pgcode", None) or getattr(exc.orig, "sqlstate", None)
                if code != "55P03":  # lock_not_available
                    raise
                raise TimeoutError(f"{what} (advisory lock {key}) still held by another session after "
                                   f"{timeout_s:g}s; a promotion is stuck, or raise the timeout") from None
            yield
    finally:
        engine.dispose()
