"""``serve run serve_configs/circles.yaml`` in a fresh project folder, as a user runs it after training.

Nothing is trained: a tiny untrained bundle is registered as ``models:/circles@champion`` in the folder's
own ``mlflow.db`` (the embedded default a fresh clone uses), the folder gets copies of ``serve_configs/``
and ``jobs/``, and Serve's own CLI runs the unmodified config except for a free HTTP port. ``serve run``
starts its own local Ray (``RAY_ADDRESS`` unset) under a private temp dir, so the test can tell its Ray
processes apart from any other Ray on the machine and check that all of them are gone at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import yaml

from tests.conftest import ROOT
from tests.e2e.conftest import BIN
from tests.helpers.images import sample_images
from tests.helpers.mlflow_store import registry
from tests.helpers.ray_procs import free_port, private_ray_tmp, ray_processes

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray]

MODEL = "circles"  # what serve_configs/circles.yaml serves: models:/circles@champion
HEADS = ("presence", "closure", "circularity")
READY_S = 240  # Ray start, Serve start, replica start and model load on a busy 2-CPU machine
STOP_S = 60
TAIL = 80  # lines of the command's output shown when something fails


@dataclass
class ServeRun:
    """The running ``serve run`` command: its process, output file, base URL and Ray temp dir."""

    proc: subprocess.Popen
    log: Path
    url: str
    ray_tmp: Path

    def tail(self) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return f"--- last {TAIL} lines of `serve run` ---\n" + "\n".join(lines[-TAIL:])

    def ray_processes(self) -> list[psutil.Process]:
        """Live processes of this command's Ray (their command lines name its private temp dir)."""
        return ray_processes(self.ray_tmp)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, int, Path]:
    """(folder, HTTP port, bundle): serve_configs/ and jobs/ copied, ``circles`` v1 registered as champion."""
    folder = tmp_path_factory.mktemp("fresh-clone")
    shutil.copytree(ROOT / "jobs", folder / "jobs")
    shutil.copytree(ROOT / "serve_configs", folder / "serve_configs")
    config = folder / "serve_configs" / "circles.yaml"
    raw = yaml.safe_load(config.read_text())
    port = free_port()
    raw["http_options"]["port"] = port
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    with registry(folder, name=MODEL, scores=(0.5,)) as reg:  # folder/mlflow.db: the cwd default
        bundle = reg.bundles[1]
    return folder, port, bundle


def _stop(run: ServeRun) -> list[str]:
    """Ctrl-C for ``serve run`` (it shuts Serve and its Ray down), then whatever is left of its process
    group and its Ray is killed. Returns the names of Ray processes that outlived the Ctrl-C."""
    if run.proc.poll() is None:
        run.proc.send_signal(signal.SIGINT)
        try:
            run.proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait(timeout=STOP_S)
    _, alive = psutil.wait_procs(run.ray_processes(), timeout=STOP_S)
    left = [f"{p.pid} {p.name()}" for p in alive]
    for p in alive:  # started by this test's command; nothing else names its temp dir
        p.kill()
    return left


@pytest.fixture(scope="module")
def served(project) -> Iterator[ServeRun]:
    folder, port, _ = project
    ray_tmp = private_ray_tmp()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env.update(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", RAY_TMPDIR=str(ray_tmp),
               RAY_ENABLE_UV_RUN_RUNTIME_ENV="0", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    log = folder / "serve-run.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "serve"), "run", "serve_configs/circles.yaml"], cwd=folder, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    run = ServeRun(proc, log, f"http://127.0.0.1:{port}", ray_tmp)
    try:
        deadline = time.monotonic() + READY_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`serve run` exited with {proc.returncode} before serving\n{run.tail()}")
            try:
                if requests.get(f"{run.url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or the proxy waits for the app
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"/healthz not 200 within {READY_S} s\n{run.tail()}")
            time.sleep(0.5)
        # what the shutdown check below looks for: without these, its "nothing left" would prove nothing
        assert {"gcs_server", "raylet"} <= {p.name() for p in run.ray_processes()}, run.tail()
        yield run
    finally:
        left = _stop(run)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode is not None
    assert not left, f"Ray processes outlived Ctrl-C of `serve run` (killed): {left}\n{run.tail()}"


def test_serve_run_answers_with_the_registered_version(served, project, tmp_path):
    from prism.inference.predictor import Predictor

    _, _, bundle = project
    (image,) = sample_images(tmp_path, n=1)
    try:
        assert requests.get(f"{served.url}/healthz", timeout=30).json() == {"status": "ok", "model": f"{MODEL} v1"}
        info = requests.get(f"{served.url}/models", timeout=30).json()
        assert (info["name"], info["version"], info["alias"], info["resolved_uri"]) == (
            MODEL, 1, "champion", f"models:/{MODEL}/1")
        resp = requests.post(f"{served.url}/predict", files=[("images", (image.name, image.read_bytes(), "image/png"))],
                             timeout=60)
        assert resp.status_code == 200, resp.text
        (result,) = resp.json()
    except (AssertionError, requests.RequestException) as exc:
        raise AssertionError(f"{exc}\n{served.tail()}") from exc
    (expected,) = Predictor.from_bundle(bundle, device="cpu").predict([str(image)], tta=True)
    assert result["image"] == image.name
    for head in HEADS:
        assert result[head]["prediction"] == expected[head]["prediction"]
        np.testing.assert_allclose(list(result[head]["probabilities"].values()),
                                   list(expected[head]["probabilities"].values()), atol=1e-5)
