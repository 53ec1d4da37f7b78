"""Local paths and object-store URIs (``s3://``, ``gs://``, ``hdfs://`` — what pyarrow opens), alike.

Credentials are pyarrow's usual ones (instance roles, ``AWS_*`` variables; ``AWS_ENDPOINT_URL`` for an
S3-compatible server). An ``s3://`` or ``gs://`` filesystem is made once per bucket in a process, not once
per file; other schemes (``hdfs://`` …) once per call.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["files_exist", "is_uri", "open_filesystem"]

THREADS = 16
"""Concurrent metadata requests to an object store (one round trip per file)."""


def is_uri(path: str) -> bool:
    """Whether ``path`` names an object in a store (``scheme://…``) rather than a local file."""
    return "://" in str(path)


@functools.lru_cache(maxsize=64)
def _bucket_filesystem(scheme: str, bucket: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(f"{scheme}://{bucket}")[0]


def open_filesystem(path: str):
    """``(pyarrow FileSystem, path inside it)`` for a local path (made absolute) or a URI."""
    import pyarrow.fs as pafs

    if not is_uri(path):
        return pafs.LocalFileSystem(), str(Path(path).resolve())
    parts = urlsplit(path)
    if parts.scheme in ("s3", "gs", "gcs") and not parts.query:  # one filesystem per bucket
        return _bucket_filesystem(parts.scheme, parts.netloc), f"{parts.netloc}{parts.path}"
    return pafs.FileSystem.from_uri(path)


def files_exist(paths: Sequence[str]) -> list[bool]:
    """For each path or URI, whether it is a file; URIs are asked concurrently."""
    import pyarrow.fs as pafs

    def exists(path: str) -> bool:
        if not is_uri(path):
            return os.path.isfile(path)
        try:
            fs, inner = open_filesystem(path)
            return fs.get_file_info(inner).type == pafs.FileType.File
        except (OSError, ValueError):  # unknown scheme, unreachable store, bad bucket name
            return False

    if not any(is_uri(p) for p in paths):
        return [os.path.isfile(p) for p in paths]
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(exists, paths))
