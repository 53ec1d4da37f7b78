"""``serve run`` (Ray's CLI) and ``run_local`` (behind ``prism serve``) on a copy of ``serve_configs/circles.yaml``.

Each starts its own local Ray in a child process, serves the fabricated champion from a SQLite store, is
queried over HTTP on loopback with the Python client, and stops on Ctrl-C (SIGINT).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import ROOT
from tests.e2e.conftest import BIN
from tests.integration.test_serve_api import free_port
from tests.unit.test_serve_models import MODEL_NAME, registry, sample_images

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
]

CONFIG = ROOT / "serve_configs" / "circles.yaml"
START_TIMEOUT = 240


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    with registry(tmp_path_factory.mktemp("store")) as r:
        yield r


def serve_config(folder, port: int) -> str:
    """The shipped config with another port and model; the tracking URI is left to the environment."""
    raw = yaml.safe_load(CONFIG.read_text())
    raw["http_options"]["port"] = port
    raw["applications"][0]["deployments"][0]["user_config"]["model_uri"] = f"models:/{MODEL_NAME}@champion"
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def start(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """``cmd`` in its own process group, output to ``cwd/server.log`` (a pipe could fill up and block it)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    full_env.update({"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env})
    with open(cwd / "server.log", "w") as log:
        return subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def log_tail(cwd: Path) -> str:
    return (cwd / "server.log").read_text(errors="replace")[-4000:]


def wait_healthy(proc: subprocess.Popen, url: str, cwd: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log_tail(cwd)}")
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or queued until a replica is up
            pass
        time.sleep(1)
    pytest.fail(f"{url}/healthz did not answer within {START_TIMEOUT} s")


def stop(proc: subprocess.Popen) -> bool:
    """Ctrl-C, as a user would; True if it exited by itself, else its process group is killed."""
    if proc.poll() is not None:
        return True
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return False


@pytest.mark.parametrize("launcher", ["serve run", "run_local"])
def test_config_serves_the_champion(reg, tmp_path, launcher):
    from prism.client import classify_circles

    port = free_port()
    config = serve_config(tmp_path, port)
    if launcher == "serve run":  # Ray's own CLI: the store comes from the environment
        proc = start([str(BIN / "serve"), "run", config], tmp_path, {"MLFLOW_TRACKING_URI": reg.tracking_uri})
    else:  # what `prism serve` calls
        code = ("import sys; from prism.serve import run_local; "
                "run_local(sys.argv[1], tracking_uri=sys.argv[2], model_uri=sys.argv[3])")
        proc = start([sys.executable, "-c", code, config, reg.tracking_uri, f"models:/{MODEL_NAME}/2"], tmp_path, {})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, tmp_path)
        info = requests.get(f"{url}/models", timeout=30).json()
        assert (info["name"], info["version"]) == (MODEL_NAME, 1 if launcher == "serve run" else 2)
        images = sample_images(tmp_path / "images", n=3)
        frame = classify_circles(tmp_path / "images", endpoint=url, silent=True)
        assert list(frame["image"]) == [str(p) for p in images]
        assert set(frame["presence"]) <= {"circle_clear", "circle_resembles", "no_circle"}
    finally:
        exited = stop(proc)
    assert exited, f"{launcher} did not stop on Ctrl-C:\n{log_tail(tmp_path)}"
