"""Shared fixtures: the circles job config, and one local Ray (2 CPUs) for every test that needs it in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CIRCLES_JOB = ROOT / "jobs" / "circles.yaml"

# Keep test runs quiet and self-contained.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture
def circles_raw() -> dict:
    import yaml

    return yaml.safe_load(CIRCLES_JOB.read_text())


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (2 CPUs) for the whole session, started by the first test that needs it.

    It has a dashboard of its own on a free port, named in ``RAY_API_SERVER_ADDRESS`` before the start so
    that every Ray process inherits it: Ray Train's placement-group cleaner asks the State API (served by
    the dashboard) whether the Train controller is alive, and without an address of its own its client
    finds every Ray on the machine (a ``serve run`` or ``ray start`` of another test, a developer's
    cluster) and fails, or asks the wrong one, is told "no such actor" and tears down a healthy run.
    """
    import ray

    from tests.helpers.ray_procs import free_port

    port = free_port()
    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_port=port, log_to_driver=True)
    yield ray
    ray.shutdown()
    if saved is None:
        os.environ.pop("RAY_API_SERVER_ADDRESS", None)
    else:
        os.environ["RAY_API_SERVER_ADDRESS"] = saved
