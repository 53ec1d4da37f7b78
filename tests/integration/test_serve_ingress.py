"""``--ingress haproxy`` on a real Serve (session Ray, HTTP on loopback): HAProxy started by Serve holds the
configured port and forwards to the replica, which serves HTTP itself; predictions of a multi-image request
are those of a local Predictor, and the app's JSON errors pass through."""

from __future__ import annotations

import numpy as np
import psutil
import pytest
import requests
import yaml

from prism.serve.ingress import haproxy_available
from tests.conftest import ROOT
from tests.helpers.images import sample_images
from tests.helpers.mlflow_store import registry
from tests.helpers.ray_procs import free_port

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
    pytest.mark.skipif(not haproxy_available(), reason="no haproxy binary (make test installs it)"),
]

TIMEOUT = 60


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    """The circles app (one replica) behind HAProxy, on a freshly started Serve; → (url, registry)."""
    from ray import serve

    from prism.serve import run_local

    serve.shutdown()  # the ingress is chosen when Serve starts
    with registry(tmp_path_factory.mktemp("store")) as reg:
        raw = yaml.safe_load((ROOT / "serve_configs" / "circles.yaml").read_text())
        (dep,) = raw["applications"][0]["deployments"]
        dep.pop("autoscaling_config", None)
        dep.update(num_replicas=1, ray_actor_options={"num_cpus": 0.5})
        dep["user_config"]["model_uri"] = reg.champion
        path = tmp_path_factory.mktemp("serve") / "serve.yaml"
        path.write_text(yaml.safe_dump(raw))
        url = run_local(path, tracking_uri=reg.tracking_uri, host="127.0.0.1", port=free_port(), blocking=False,
                        ingress="haproxy")
        yield url, reg
        serve.shutdown()


def test_haproxy_answers_with_the_replicas_predictions(served, tmp_path):
    from prism.inference.predictor import Predictor

    url, reg = served
    port = int(url.rsplit(":", 1)[1])
    listeners = {c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert listeners and all(psutil.Process(pid).name() == "haproxy" for pid in listeners)  # HAProxy holds the port
    health = requests.get(f"{url}/healthz", timeout=TIMEOUT)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    paths = sample_images(tmp_path, n=5)
    resp = requests.post(f"{url}/predict", timeout=TIMEOUT,
                         files=[("images", (p.name, p.read_bytes(), "image/png")) for p in paths],
                         data={"tta": "false"})
    assert resp.status_code == 200, resp.text
    results = resp.json()
    expected = Predictor.from_bundle(reg.bundles[1], device="cpu").predict([str(p) for p in paths], tta=False)
    assert [r["image"] for r in results] == [p.name for p in paths]
    for got, want in zip(results, expected, strict=True):
        for head in ("presence", "closure", "circularity"):
            assert got[head]["prediction"] == want[head]["prediction"]
            np.testing.assert_allclose(list(got[head]["probabilities"].values()),
                                       list(want[head]["probabilities"].values()), atol=1e-5)
    bad = requests.post(f"{url}/predict", files=[("images", ("x.png", b"not an image", "image/png"))], timeout=TIMEOUT)
    assert bad.status_code == 400 and bad.json()["error"]  # the app's JSON errors pass through HAProxy
