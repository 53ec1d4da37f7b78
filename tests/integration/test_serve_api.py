"""The classifier on a real Ray Serve (local Ray, HTTP on loopback): API, bad input, batching, promotion, client.

One Serve instance per module serves ``models:/circles-serve@champion`` from a SQLite store with two
fabricated versions (v1 champion, v2 with other head weights). It is deployed from a copy of
``serve_configs/circles.yaml`` through ``run_local`` (Serve's config path, as ``serve run``/``serve deploy``),
so a redeploy with another ``user_config`` reconfigures the running replica in place.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from PIL import Image

from prism.serve import ServeSettings, run_local
from prism.tracking import set_alias
from tests.conftest import ROOT
from tests.helpers.images import bomb_png, sample_images
from tests.helpers.mlflow_store import MODEL_NAME, registry
from tests.helpers.ray_procs import free_port

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
]

CONFIG = ROOT / "serve_configs" / "circles.yaml"
HEADS = ("presence", "closure", "circularity")
MAX_PIXELS = 256 * 256
MAX_IMAGES = 4
MAX_BYTES = 512 * 1024
TIMEOUT = 60
TOKEN_ENV, TOKEN = "PRISM_RELOAD_TOKEN", "integration-token"  # the replicas get it through runtime_env
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (240, 240, 240)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    with registry(tmp_path_factory.mktemp("store")) as r:
        yield r


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return sample_images(tmp_path_factory.mktemp("images"), n=4)


@pytest.fixture(scope="module")
def predictors(reg):
    """Local predictors of v1 and v2: what the endpoint must answer."""
    from prism.inference.predictor import Predictor

    return {v: Predictor.from_bundle(path, device="cpu") for v, path in reg.bundles.items()}


def settings(reg, **overrides) -> ServeSettings:
    base = {"model_uri": reg.champion, "max_batch_size": 8, "batch_wait_timeout_s": 0.01,
            "max_image_pixels": MAX_PIXELS, "max_images_per_request": MAX_IMAGES, "max_request_bytes": MAX_BYTES,
            "reload": {"enabled": True, "token_env": TOKEN_ENV}}
    return ServeSettings(**{**base, **overrides})


class Server:
    """The app deployed from a copy of ``serve_configs/circles.yaml`` through ``run_local`` (Serve's config path)."""

    def __init__(self, reg, folder: Path):
        self.reg, self.folder, self.port = reg, folder, free_port()
        self.url = ""

    def deploy(self, **overrides) -> None:
        """(Re)deploy with these settings; a running replica is reconfigured in place, not restarted."""
        raw = yaml.safe_load(CONFIG.read_text())
        (app,) = raw["applications"]
        app["route_prefix"] = "/circles"
        app["runtime_env"] = {"env_vars": {TOKEN_ENV: TOKEN}}
        (dep,) = app["deployments"]
        dep["autoscaling_config"].update(min_replicas=1, max_replicas=1)  # one replica: /reload reaches it
        dep["user_config"] = settings(self.reg, **overrides).model_dump(mode="json")
        path = self.folder / "serve.yaml"
        path.write_text(yaml.safe_dump(raw))
        self.url = run_local(path, tracking_uri=self.reg.tracking_uri, host="127.0.0.1", port=self.port,
                             blocking=False)
        deadline = time.monotonic() + 120
        while requests.get(f"{self.url}/settings", timeout=TIMEOUT).json() != dep["user_config"]:
            assert time.monotonic() < deadline, "the new user_config never reached the replica"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def deployed(ray_local, reg, tmp_path_factory):
    from ray import serve

    server = Server(reg, tmp_path_factory.mktemp("serve"))
    server.deploy()
    yield server
    serve.shutdown()


@pytest.fixture(scope="module")
def server(deployed) -> str:
    """Base URL of the app (route prefix /circles)."""
    return deployed.url


def files(paths) -> list:
    return [("images", (p.name, p.read_bytes(), "image/png")) for p in paths]


def assert_same(results, expected):
    """Same images, predictions and (within 1e-5) probabilities."""
    assert [r["image"] for r in results] == [e["image"] for e in expected]
    for r, e in zip(results, expected, strict=True):
        for head in HEADS:
            assert r[head]["prediction"] == e[head]["prediction"]
            assert list(r[head]["probabilities"]) == list(e[head]["probabilities"])
            np.testing.assert_allclose(list(r[head]["probabilities"].values()),
                                       list(e[head]["probabilities"].values()), atol=1e-5)


def local(predictor, paths, tta=True):
    return [{**r, "image": p.name} for p, r in zip(paths, predictor.predict([str(p) for p in paths], tta=tta),
                                                   strict=True)]


def assert_still_serving(server, images):
    assert requests.get(f"{server}/healthz", timeout=TIMEOUT).status_code == 200
    resp = requests.post(f"{server}/predict", files=files(images[:1]), timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    assert resp.json()[0]["image"] == images[0].name


# ------------------------------------------------------------------------------------------- API


def test_healthz_and_models(server, reg):
    assert requests.get(f"{server}/healthz", timeout=TIMEOUT).json() == {"status": "ok", "model": f"{MODEL_NAME} v1"}
    info = requests.get(f"{server}/models", timeout=TIMEOUT).json()
    assert (info["name"], info["version"], info["alias"], info["uri"]) == (MODEL_NAME, 1, "champion", reg.champion)
    assert info["run_id"] and info["metric"] == "val/macro_f1" and info["metric_value"] == 0.5
    assert (info["task"], info["img_size"]) == ("multihead", 64)


def test_openapi_documents_both_request_types(server):
    spec = requests.get(f"{server}/openapi.json", timeout=TIMEOUT).json()
    content = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/json"}
    assert {"tta", "top_k"} <= set(content["multipart/form-data"]["schema"]["properties"])  # the task's options
    assert {"/healthz", "/models", "/reload"} <= set(spec["paths"])
    assert requests.get(f"{server}/docs", timeout=TIMEOUT).status_code == 200


def test_predict_multipart_matches_local_predictor(server, images, predictors):
    resp = requests.post(f"{server}/predict", files=files(images), timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    assert_same(resp.json(), local(predictors[1], images, tta=True))


def test_predict_json_base64_with_options(server, images, predictors):
    body = {"images": [base64.b64encode(p.read_bytes()).decode() for p in images[:2]],
            "names": [p.name for p in images[:2]], "tta": False, "top_k": 1}
    resp = requests.post(f"{server}/predict", json=body, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    expected = local(predictors[1], images[:2], tta=False)
    for r, e in zip(resp.json(), expected, strict=True):
        assert r["image"] == e["image"]
        for head in HEADS:
            (cls, p), = r[head]["probabilities"].items()  # top_k=1: the most probable class only
            top = max(e[head]["probabilities"].items(), key=lambda kv: kv[1])
            assert cls == top[0] and abs(p - top[1]) < 1e-5


# ------------------------------------------------------------------------------------- bad input

BAD_INPUT = {
    "undecodable": (dict(files=[("images", ("junk.png", b"\x89PNG but not really", "image/png"))]),
                    400, "undecodable_image", "junk.png"),
    "empty-json": (dict(data=b"", headers={"Content-Type": "application/json"}), 400, "empty_body", "empty"),
    "no-body": (dict(), 400, "empty_body", "empty request"),
    "content-type": (dict(data=b"hello", headers={"Content-Type": "text/plain"}), 415, "unsupported_media",
                     "text/plain"),
    "over-pixel-limit": (dict(files=[("images", ("big.png", png((300, 300)), "image/png"))]), 413,
                         "image_too_large", "big.png: 300x300 = 90000 pixels is over max_image_pixels=65536"),
    "bomb": (dict(files=[("images", ("bomb.png", bomb_png(8000, 8000), "image/png"))]), 413, "image_too_large",
             "8000x8000"),
    "too-many": (dict(files=[("images", (f"{i}.png", png((8, 8)), "image/png")) for i in range(MAX_IMAGES + 1)]),
                 413, "too_many_images", f"max_images_per_request={MAX_IMAGES}"),
    "bad-base64": (dict(json={"images": ["@@@"]}), 400, "undecodable_image", "not valid base64"),
    "bad-json": (dict(data=b"{not json", headers={"Content-Type": "application/json"}), 400, "invalid_request",
                 "JSON body"),
    "over-byte-limit": (dict(data=b"x" * (MAX_BYTES + 1), headers={"Content-Type": "application/json"}), 413,
                        "body_too_large", f"{MAX_BYTES + 1} bytes, max_request_bytes={MAX_BYTES}"),
    "over-byte-limit-chunked": (dict(data=iter([b"x" * 65536] * (MAX_BYTES // 65536 + 1)),
                                     headers={"Content-Type": "application/json"}), 413, "body_too_large",
                                f"more than {MAX_BYTES} bytes"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_a_json_4xx_and_the_replica_survives(server, images, case):
    kwargs, status, error, detail = BAD_INPUT[case]
    resp = requests.post(f"{server}/predict", timeout=TIMEOUT, **kwargs)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == error and detail in body["detail"]
    assert_still_serving(server, images)


def test_http_errors_use_the_json_error_body(server):
    resp = requests.get(f"{server}/predict", timeout=TIMEOUT)
    assert (resp.status_code, resp.json()["error"]) == (405, "method_not_allowed")
    resp = requests.get(f"{server}/nope", timeout=TIMEOUT)
    assert (resp.status_code, resp.json()) == (404, {"error": "not_found", "detail": "Not Found"})


def test_reload_needs_the_replicas_token(server):
    resp = requests.post(f"{server}/reload", timeout=TIMEOUT)
    assert (resp.status_code, resp.json()["error"], resp.headers["www-authenticate"]) == (401, "missing_token", "Bearer")
    resp = requests.post(f"{server}/reload", headers={"Authorization": "Bearer not-it"}, timeout=TIMEOUT)
    assert (resp.status_code, resp.json()["error"]) == (403, "invalid_token")
    assert TOKEN not in resp.text
    resp = requests.post(f"{server}/reload", headers=AUTH, timeout=TIMEOUT)
    assert resp.status_code == 200 and resp.json()["reloaded"] is False, resp.text  # champion did not move


# -------------------------------------------------------------------------------------- batching


def test_concurrent_requests_share_batches(deployed, images):
    """With a long batch wait, four concurrent requests fill one batch and a lone image waits the wait out.

    Batch composition is read from ``GET /stats`` (the replica's batch-size histogram), not inferred from
    latencies; the only timing asserted is a lower bound (a lone image cannot run before its wait ends)."""
    wait = 3.0
    loaded_at = requests.get(f"{deployed.url}/models", timeout=TIMEOUT).json()["loaded_at"]
    deployed.deploy(max_batch_size=4, batch_wait_timeout_s=wait)
    url = deployed.url

    def batches() -> Counter[int]:
        return Counter({int(k): v for k, v in requests.get(f"{url}/stats", timeout=TIMEOUT).json()["batch_sizes"].items()})

    try:
        # reconfigured in place: same replica, same loaded model
        assert requests.get(f"{url}/models", timeout=TIMEOUT).json()["loaded_at"] == loaded_at
        barrier = threading.Barrier(4)

        def one(path):
            barrier.wait()
            return requests.post(f"{url}/predict", files=files([path]), timeout=TIMEOUT)

        before = batches()
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(one, images))
        assert [r.status_code for r in responses] == [200] * 4
        assert batches() - before == Counter({4: 1}), "4 concurrent requests should share one batch"
        before = batches()
        assert requests.post(f"{url}/predict", files=files(images), timeout=TIMEOUT).status_code == 200
        assert batches() - before == Counter({4: 1}), "4 images of one request should fill one batch"
        before = batches()
        start = time.monotonic()
        assert requests.post(f"{url}/predict", files=files(images[:1]), timeout=TIMEOUT).status_code == 200
        lone = time.monotonic() - start
        assert batches() - before == Counter({1: 1})
    finally:
        deployed.deploy()
    assert lone >= wait * 0.95, f"a lone image should wait for the batch to fill ({lone:.2f} s)"


# ------------------------------------------------------------------------------------- promotion


@pytest.mark.parametrize("trigger", ["reload", "reconfigure"])
def test_promotion_swaps_versions_under_load_without_failures(deployed, images, predictors, trigger):
    """The champion alias moves while requests flow; POST /reload or a config change swaps the version."""
    server = deployed.url
    stop = threading.Event()
    expected = {v: local(p, images[:1], tta=True)[0] for v, p in predictors.items()}

    answered = threading.Condition()
    count = [0]

    def fire() -> list[tuple[int, dict | str]]:
        seen = []
        while not stop.is_set():
            resp = requests.post(f"{server}/predict", files=files(images[:1]), timeout=TIMEOUT)
            seen.append((resp.status_code, resp.json()[0] if resp.ok else resp.text))
            with answered:
                count[0] += 1
                answered.notify_all()
        return seen

    def await_answers(more: int) -> None:
        """Block until ``more`` further requests (of any client) have been answered."""
        with answered:
            target = count[0] + more
            assert answered.wait_for(lambda: count[0] >= target, timeout=120), f"{count[0]} answers, not {target}"

    try:
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(fire) for _ in range(3)]
            await_answers(6)  # version 1 answers under load
            set_alias(MODEL_NAME, "champion", 2)
            if trigger == "reload":
                reload = requests.post(f"{server}/reload", headers=AUTH, timeout=TIMEOUT)
                assert reload.status_code == 200, reload.text
                body = reload.json()
                assert (body["reloaded"], body["previous"]["version"], body["current"]["version"]) == (True, 1, 2)
            else:  # any user_config change calls reconfigure, which re-resolves the alias
                deployed.deploy(batch_wait_timeout_s=0.02)
            await_answers(6)  # the swap is done when reload / the new user_config returned: version 2 answers
            stop.set()
            seen = [s for f in futures for s in f.result()]
        assert [code for code, _ in seen] == [200] * len(seen), [r for c, r in seen if c != 200][:3]
        versions = []
        for _, result in seen:
            matches = [v for v, e in expected.items() if result[HEADS[0]]["probabilities"] ==
                       pytest.approx(e[HEADS[0]]["probabilities"], abs=1e-5)]
            assert len(matches) == 1, result
            versions.append(matches[0])
        assert versions[0] == 1 and 2 in versions
        assert requests.get(f"{server}/models", timeout=TIMEOUT).json()["version"] == 2
        assert_same([requests.post(f"{server}/predict", files=files(images[:1]), timeout=TIMEOUT).json()[0]],
                    [expected[2]])
    finally:
        set_alias(MODEL_NAME, "champion", 1)
        if trigger == "reconfigure":
            deployed.deploy()
        else:
            requests.post(f"{server}/reload", headers=AUTH, timeout=TIMEOUT)
    assert requests.get(f"{server}/models", timeout=TIMEOUT).json()["version"] == 1


# ---------------------------------------------------------------------------------------- client


def test_client_local_and_endpoint_agree(server, reg, images, predictors, tmp_path):
    from prism.tasks.multihead.client import classify_circles, results_frame

    folder = images[0].parent
    kwargs = dict(output_format="json", use_tta=True, silent=True, batch_size=MAX_IMAGES)
    here = classify_circles(folder, model=reg.champion, device="cpu", **kwargs)
    there = classify_circles(folder, endpoint=server, output_path=tmp_path / "there.csv", **kwargs)
    assert [r["image"] for r in here] == [str(p) for p in sorted(images)]
    assert_same(there, here)

    frame_here = classify_circles(folder, model=reg.champion, output_path=tmp_path / "here.json", silent=True)
    assert json.loads((tmp_path / "here.json").read_text()) == here
    frame_there = pd.read_csv(tmp_path / "there.csv", keep_default_na=False)  # "na" is a prediction
    assert list(frame_there.columns) == list(frame_here.columns)
    pd.testing.assert_frame_equal(frame_there, frame_here, check_exact=False, atol=1e-5)
    # the client's frame is the `prism predict` CSV
    pd.testing.assert_frame_equal(frame_here, predictors[1].to_dataframe(here))
    assert results_frame(here).equals(frame_here)

    with pytest.raises(ValueError, match="serves models:/circles-serve@champion"):
        classify_circles(folder, model="models:/other@champion", endpoint=server, silent=True)
    with pytest.raises(ValueError, match="applies to local inference"):
        classify_circles(folder, endpoint=server, device="cpu", silent=True)
    # requests are capped at the endpoint's max_images_per_request (GET /settings)
    many = classify_circles([*images, images[0]], endpoint=server, batch_size=64, silent=True, output_format="json")
    assert_same(many, [*here, here[0]])
