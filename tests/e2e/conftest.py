"""End-to-end helpers: run the real ``prism`` / ``ray`` commands in a scratch project folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` with the project's environment on PATH; output captured as text."""
    # a store another test pointed MLflow at (MLflow exports its URIs to the environment) is not this project's
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ADDRESS")}
    full_env.update({"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})})
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A scratch folder laid out like the project root: ``jobs/`` and nothing trained yet."""
    d = tmp_path_factory.mktemp("project")
    shutil.copytree(ROOT / "jobs", d / "jobs")
    return d
