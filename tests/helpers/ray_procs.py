"""The processes of one Ray instance on a shared machine, told apart by its private temp dir.

``ray stop`` stops every Ray on the machine (other test modules', a developer's own cluster); a test that
starts Ray with ``--temp-dir`` / ``RAY_TMPDIR`` stops only the processes whose command line names that dir.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
from pathlib import Path

import psutil

__all__ = ["free_port", "private_ray_tmp", "ray_processes", "stop_ray_processes"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_ray_tmp() -> Path:
    """A new temp dir for one Ray instance; short, under /tmp: Ray's socket paths must fit 107 bytes."""
    return Path(tempfile.mkdtemp(prefix="prism-ray-", dir="/tmp"))


def ray_processes(ray_tmp: Path) -> list[psutil.Process]:
    """Live processes whose command line names ``ray_tmp`` (the Ray started with that temp dir)."""
    mark = str(ray_tmp)
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(mark in part for part in p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def stop_ray_processes(ray_tmp: Path, timeout: float = 10.0) -> list[str]:
    """SIGTERM to that Ray's processes, SIGKILL to what is left after ``timeout``; returns the killed ones."""
    procs = ray_processes(ray_tmp)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    return [f"{p.pid} {p.name()}" for p in alive]
