"""Replica loss under load on a real Serve (session Ray, HTTP on loopback): the scenario of
``bench/serve_faults.py`` with Prism's configs: 2 replicas, 20 requests/s for 60 s, one replica killed (SIGKILL)
after 20 s. At least 99.9 % of the requests must be answered, and Serve must replace the lost replica."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import requests
import yaml

from prism.serve.proxy_retry import RETRY_HEADER
from tests.conftest import ROOT
from tests.helpers.images import png
from tests.helpers.mlflow_store import registry
from tests.helpers.ray_procs import free_port

sys.path.insert(0, str(ROOT / "bench"))
from serve_faults import APP, fault_config, replica_pids, run_scenario, wait_replicas  # noqa: E402

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
]

RATE, DURATION_S, KILL_AT_S = 20.0, 60.0, 20.0


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    """The circles app with 2 replicas, deployed on a freshly started Serve (so its proxy gets the middleware)."""
    from ray import serve

    from prism.serve import run_local

    serve.shutdown()  # controller options apply when Serve starts
    with registry(tmp_path_factory.mktemp("store")) as reg:
        folder: Path = tmp_path_factory.mktemp("serve")
        path = folder / "serve.yaml"
        path.write_text(yaml.safe_dump(fault_config(reg.champion, retry_layer=True, num_cpus=0.5)))
        url = run_local(path, tracking_uri=reg.tracking_uri, host="127.0.0.1", port=free_port(), blocking=False)
        wait_replicas(2, set(), timeout_s=120)
        yield url
        serve.shutdown()


def test_a_killed_replica_under_load_costs_no_request_and_is_replaced(served):
    from ray import serve

    assert requests.get(f"{served}/healthz", timeout=30).headers[RETRY_HEADER] == "0"  # the middleware is on
    first = replica_pids()
    run = run_scenario(served, png((128, 128)), rate=RATE, duration_s=DURATION_S, kill_at_s=KILL_AT_S,
                       client_retries=True)
    print({k: v for k, v in run.items() if k != "outcomes"})  # requests, success rate, p50 / p99, replacement
    assert run["requests"] == int(RATE * DURATION_S)
    assert run["success_rate"] >= 0.999, run["errors"]
    assert run["killed_pid"] in first and run["killed_pid"] not in replica_pids()
    assert run["replaced_after_s"] < 180  # wait_replicas: 2 live processes, HEALTHY, 2 RUNNING
    status = serve.status().applications[APP].deployments["ModelServer"]
    assert status.status == "HEALTHY" and status.replica_states.get("RUNNING") == 2
    # requests started after the kill were answered too (the kill happened inside the measured window)
    late = [o for o in run["outcomes"] if o[0] > KILL_AT_S]
    assert len(late) > RATE * (DURATION_S - KILL_AT_S) * 0.9 and all(o[2] for o in late)
