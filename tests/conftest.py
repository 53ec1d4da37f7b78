"""Shared fixtures: a tiny circles job config and a local Ray shared per test module."""

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
