"""Classes added while serving: two replicas (ServedModel, no Serve) over one ClassStore answer alike; the
prototypes equal a direct computation; access, bad input and models that cannot add classes are refused."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import torch
from PIL import Image

from prism.inference.predictor import Predictor
from prism.serve.classes import ClassStore, LocalStore
from prism.serve.errors import RequestError
from prism.serve.model import ServedModel
from prism.tasks.classify.bank import ClassBank
from prism.tasks.classify.zeroshot import class_prototypes, zero_shot_probs
from tests.helpers.bundles import classify_bundle


def _pngs(seed: int, n: int, tint: tuple[int, int, int]) -> list[bytes]:
    """``n`` noisy 40 px images around colour ``tint`` (so two tints make two tellable classes)."""
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


def _replica(bundle, store, **settings) -> ServedModel:
    served = ServedModel("sqlite:///:memory:", device="cpu", class_store=store)
    asyncio.run(served.reconfigure({"model_uri": str(bundle), "classes": {"enabled": True}, **settings}))
    return served


def _predict(served: ServedModel, images: list[bytes], **options) -> list[dict]:
    async def go():
        if "zero_shot" in options:
            await served.sync_classes()
        opts = served.request_options(options)
        return await served.predict_images([served.prepare(b, f"{i}.png", opts) for i, b in enumerate(images)])

    return asyncio.run(go())


def test_a_class_added_on_one_replica_is_served_by_another(bundle):
    store = LocalStore()
    a, b = _replica(bundle, store), _replica(bundle, store)
    red, blue = _pngs(0, 4, (220, 30, 30)), _pngs(1, 4, (30, 30, 220))
    asyncio.run(a.add_class("red thing", [(f"r{i}.png", x) for i, x in enumerate(red)]))
    info = asyncio.run(a.add_class(" blue thing ", [(f"b{i}.png", x) for i, x in enumerate(blue)]))
    assert info["added_class"] == "blue thing" and info["revision"] == 2
    assert info["added"] == [{"class": "red thing", "shots": 4}, {"class": "blue thing", "shots": 4}]

    queries = _pngs(2, 2, (220, 30, 30)) + _pngs(3, 2, (30, 30, 220))
    got = _predict(b, queries, zero_shot=True, top_k=2)  # b never saw the examples
    direct = Predictor.from_bundle(bundle, "cpu")
    emb = direct.raw_predictions([direct.prepare(x) for x in red + blue])["embedding"]
    protos = class_prototypes(emb, torch.tensor([0] * 4 + [1] * 4), 2)
    expected = zero_shot_probs(direct.raw_predictions([direct.prepare(x) for x in queries])["embedding"], protos)
    for r, p in zip(got, expected, strict=True):
        assert r["prediction"] == ["red thing", "blue thing"][int(p.argmax())]
        assert r["probability"] == pytest.approx(float(p.max()), abs=1e-5)
    assert [r["prediction"] for r in got] == ["red thing"] * 2 + ["blue thing"] * 2
    assert _predict(b, queries[:1])[0]["prediction"] in {"cat", "dog", "bird"}  # the trained head, as before

    asyncio.run(b.remove_class("red thing"))
    assert {r["prediction"] for r in _predict(a, queries, zero_shot=True)} == {"blue thing"}
    asyncio.run(a.sync_classes())
    assert a.classes_info()["added"] == [{"class": "blue thing", "shots": 4}] and a.classes_info()["revision"] == 3


def test_added_classes_join_the_saved_ones_and_replace_a_namesake(bundle, tmp_path):
    direct = Predictor.from_bundle(bundle, "cpu")
    task = direct.task
    task.bank = ClassBank("prototypes", ["old", "star"], torch.nn.functional.normalize(torch.randn(2, 16), dim=-1))
    try:
        task.set_added_classes({"star": np.ones(16, np.float32) / 4, "new": np.full(16, -0.25, np.float32)})
        merged = task.zero_shot_bank()
        assert merged.classes == ["old", "star", "new"]
        torch.testing.assert_close(merged.embeddings[1], torch.full((16,), 0.25))
        assert task.bank.classes == ["old", "star"] and task.label_maps()["zero_shot"]["classes"] == ["old", "star"]
        assert task.artifacts(direct.model)  # what a bundle saves is the saved bank only
        task.set_added_classes({})
        assert task.zero_shot_bank() is task.bank
        task.bank = ClassBank("text", ["a", "b"], torch.nn.functional.normalize(torch.randn(2, 16), dim=-1))
        assert "CLIP text embeddings" in task.add_classes_error()
        with pytest.raises(ValueError, match="CLIP text embeddings"):
            task.set_added_classes({"x": np.ones(16, np.float32)})
    finally:
        task.bank = None
        task.set_added_classes({})


def test_bad_requests_are_refused_before_the_store_changes(bundle):
    store = LocalStore()
    served = _replica(bundle, store)
    images = [("x.png", _pngs(4, 1, (0, 200, 0))[0])]
    for name, files, status, match in [
        ("", images, 400, "1 to 200 printable"), ("x" * 201, images, 400, "1 to 200"),
        ("tab\tname", images, 400, "printable"), ("ok", [], 400, "no example images"),
        ("ok", [("broken.png", b"not an image")], 400, "broken.png"),
    ]:
        with pytest.raises(RequestError, match=match) as exc:
            asyncio.run(served.add_class(name, files))
        assert exc.value.status == status
    with pytest.raises(RequestError, match="not an added class") as exc:
        asyncio.run(served.remove_class("nope"))
    assert exc.value.status == 404
    assert store.store.since(served.loaded().info.resolved_uri, -1).revision == 0
    for raw, match in [({"zero_shot": True}, "no zero-shot classes"), ({"classes": "a,b"}, "needs a CLIP backbone")]:
        with pytest.raises(RequestError, match=match) as exc:  # the task's own checks: a 400, not a 500
            served.request_options(raw)
        assert exc.value.status == 400


def test_access_follows_the_classes_settings(bundle, monkeypatch):
    off = ServedModel("sqlite:///:memory:", device="cpu", class_store=LocalStore())
    asyncio.run(off.reconfigure({"model_uri": str(bundle)}))
    with pytest.raises(RequestError, match="classes.enabled: false") as exc:
        off.authorize_classes(None)
    assert (exc.value.status, exc.value.error) == (403, "classes_disabled")
    monkeypatch.setenv("PRISM_CLASSES_TOKEN", "s3cret")
    guarded = _replica(bundle, LocalStore(), classes={"enabled": True, "token_env": "PRISM_CLASSES_TOKEN"})
    guarded.authorize_classes("s3cret")
    with pytest.raises(RequestError, match="POST /classes and DELETE") as exc:
        guarded.authorize_classes(None)
    assert exc.value.status == 401
    with pytest.raises(RequestError, match="PRISM_CLASSES_TOKEN") as exc:
        guarded.authorize_classes("wrong")
    assert exc.value.status == 403
    with pytest.raises(RequestError, match="reload.enabled: false"):
        guarded.authorize_reload("s3cret")  # the classes token opens nothing else


def test_a_task_that_cannot_add_classes_says_so(tmp_path):
    from tests.helpers.bundles import fabricate_bundle

    served = _replica(fabricate_bundle(tmp_path / "mh", seed=0), LocalStore())
    with pytest.raises(RequestError, match="multihead task does not add classes") as exc:
        asyncio.run(served.add_class("x", [("x.png", _pngs(5, 1, (9, 9, 9))[0])]))
    assert exc.value.status == 409
    asyncio.run(served.sync_classes())  # nothing to copy, no error
    assert served.classes_info()["can_add"] is False


def test_store_revisions_sizes_and_versions():
    store = ClassStore()
    assert store.since("m1", -1).revision == 0 and store.since("m1", 0) is None
    store.put("m1", "a", np.ones(4), 2)
    snap = store.put("m1", "b", np.zeros(4), 3)
    assert snap.revision == 2 and list(snap.entries) == ["a", "b"] and snap.shots == {"a": 2, "b": 3}
    assert store.since("m1", 2) is None and store.since("m2", -1).entries == {}  # per model version
    with pytest.raises(ValueError, match="size 3, the other classes' are 4"):
        store.put("m1", "c", np.ones(3), 1)
    assert store.put("m1", "a", np.full(4, 2.0), 5).shots["a"] == 5  # replaced, not duplicated
    assert store.remove("m1", "a").entries.keys() == {"b"}
