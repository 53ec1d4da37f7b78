"""Classes added over HTTP on a real Ray Serve with two replicas: ``serve_configs/classify.yaml`` serving a tiny
untrained classifier; a class added through one request is answered alike by every replica."""

from __future__ import annotations

import contextlib
import io
from collections import Counter

import numpy as np
import pytest
import requests
import torch
import yaml
from PIL import Image

from prism.serve import run_local
from tests.conftest import ROOT
from tests.helpers.bundles import classify_bundle
from tests.helpers.ray_procs import free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]

APP = "classes-it"
TIMEOUT = 60
QUERIES = 12


def _pngs(seed: int, n: int, tint: tuple[int, int, int]) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        arr = np.clip(np.array(tint) + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return classify_bundle(tmp_path_factory.mktemp("m") / "bundle")


@pytest.fixture(scope="module")
def server(ray_local, bundle, tmp_path_factory):
    import ray
    from ray import serve

    raw = yaml.safe_load((ROOT / "serve_configs" / "classify.yaml").read_text())
    (app,) = raw["applications"]
    app.update(name=APP, route_prefix="/sketch")
    (dep,) = app["deployments"]
    dep.pop("autoscaling_config")
    dep["num_replicas"] = 2
    dep["user_config"]["model_uri"] = str(bundle)
    path = tmp_path_factory.mktemp("serve") / "serve.yaml"
    path.write_text(yaml.safe_dump(raw))
    url = run_local(path, tracking_uri=f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db",
                    host="127.0.0.1", port=free_port(), blocking=False)
    yield url
    serve.shutdown()
    with contextlib.suppress(ValueError):  # the store actor, if a test made one: detached, it would stay
        ray.kill(ray.get_actor(f"prism-classes-{APP}", namespace="prism"))


def _files(images: list[bytes]) -> list:
    return [("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]


def test_a_class_added_on_one_replica_is_served_by_all(server, bundle):
    from prism.inference.predictor import Predictor
    from prism.tasks.classify.zeroshot import class_prototypes, zero_shot_probs

    listed = requests.get(f"{server}/classes", timeout=TIMEOUT).json()
    assert listed["classes"] == ["cat", "dog", "bird"] and listed["added"] == [] and listed["can_add"]
    red, blue = _pngs(0, 4, (220, 30, 30)), _pngs(1, 4, (30, 30, 220))
    for name, examples in (("red thing", red), ("blue thing", blue)):
        resp = requests.post(f"{server}/classes", data={"name": name}, files=_files(examples), timeout=TIMEOUT)
        assert resp.status_code == 200, resp.text
    assert [a["class"] for a in resp.json()["added"]] == ["red thing", "blue thing"]

    query = _pngs(2, 1, (220, 30, 30))
    direct = Predictor.from_bundle(bundle, "cpu")
    emb = direct.raw_predictions([direct.prepare(x) for x in red + blue])["embedding"]
    expected = zero_shot_probs(direct.raw_predictions([direct.prepare(query[0])])["embedding"],
                               class_prototypes(emb, torch.tensor([0] * 4 + [1] * 4), 2))[0]
    answers = Counter()
    for _ in range(QUERIES):  # Serve spreads these over both replicas; every one must know both classes
        resp = requests.post(f"{server}/predict", data={"zero_shot": "true"}, files=_files(query), timeout=TIMEOUT)
        assert resp.status_code == 200, resp.text
        (result,) = resp.json()
        answers[(result["prediction"], round(result["probability"], 4))] += 1
        assert result["probability"] == pytest.approx(float(expected.max()), abs=1e-4)
    assert list(answers) == [("red thing", round(float(expected.max()), 4))]

    resp = requests.delete(f"{server}/classes/red thing", timeout=TIMEOUT)
    assert resp.status_code == 200 and [a["class"] for a in resp.json()["added"]] == ["blue thing"]
    for _ in range(QUERIES):  # removed on every replica too
        resp = requests.post(f"{server}/predict", data={"zero_shot": "true"}, files=_files(query), timeout=TIMEOUT)
        assert resp.json()[0]["prediction"] == "blue thing", resp.text


def test_bad_class_requests_are_json_4xx(server):
    cases = [
        (requests.post, "/classes", {"data": {"name": ""}, "files": _files(_pngs(3, 1, (9, 9, 9)))}, 400),
        (requests.post, "/classes", {"data": {"name": "x", "colour": "red"},
                                     "files": _files(_pngs(3, 1, (9, 9, 9)))}, 400),
        (requests.post, "/classes", {"data": {"name": "x"}, "files": [("images", ("a.png", b"junk", "image/png"))]},
         400),
        (requests.delete, "/classes/never-added", {}, 404),
        (requests.post, "/predict", {"data": {"classes": "a,b"}, "files": _files(_pngs(3, 1, (9, 9, 9)))}, 400),
    ]
    for method, path, kwargs, status in cases:
        resp = method(f"{server}{path}", timeout=TIMEOUT, **kwargs)
        assert resp.status_code == status, (path, kwargs.get("data"), resp.text)
        assert set(resp.json()) == {"error", "detail"}


def test_openapi_documents_the_class_routes_and_options(server):
    spec = requests.get(f"{server}/openapi.json", timeout=TIMEOUT).json()
    assert {"get", "post"} <= set(spec["paths"]["/classes"]) and "delete" in spec["paths"]["/classes/{name}"]
    form = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"top_k", "zero_shot", "classes"} <= set(form["properties"])
    body = spec["paths"]["/classes"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["name", "images"]
