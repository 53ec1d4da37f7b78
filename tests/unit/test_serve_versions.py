"""ServedModel without Serve: loading from the registry, reconfigure, reloads that follow an alias, batches."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from prism.serve.model import ServedModel, run_batch
from prism.tracking import set_alias
from tests.helpers.images import sample_images
from tests.helpers.mlflow_store import MODEL_NAME, registry

pytestmark = [
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    with registry(tmp_path_factory.mktemp("store")) as r:
        yield r


@pytest.fixture
def champion_v1(reg):
    set_alias(MODEL_NAME, "champion", 1)
    yield reg
    set_alias(MODEL_NAME, "champion", 1)


def test_reconfigure_loads_the_alias_and_applies_batch_settings(champion_v1):
    served = ServedModel(champion_v1.tracking_uri, device="cpu")
    with pytest.raises(RuntimeError, match="no model loaded"):
        asyncio.run(served.check_health())
    asyncio.run(served.reconfigure({"model_uri": champion_v1.champion, "max_batch_size": 5,
                                    "batch_wait_timeout_s": 0.25}))
    info = served.loaded().info
    assert (info.name, info.version, info.alias, info.resolved_uri) == (
        MODEL_NAME, 1, "champion", f"models:/{MODEL_NAME}/1")
    assert (info.metric, info.metric_value, info.task, info.img_size) == ("val/macro_f1", 0.5, "multihead", 64)
    assert info.run_id and "champion" in info.aliases
    assert (served.batcher.max_batch_size, served.batcher.batch_wait_timeout_s) == (5, 0.25)
    asyncio.run(served.check_health())


def test_reload_and_reconfigure_follow_a_moved_alias(champion_v1):
    served = ServedModel(champion_v1.tracking_uri, device="cpu")

    async def scenario():
        await served.reconfigure({"model_uri": champion_v1.champion})
        first = served.loaded()
        assert not await served.reload()  # alias unchanged: nothing loaded
        assert served.loaded() is first
        set_alias(MODEL_NAME, "champion", 2)
        assert await served.reload()
        assert served.loaded().info.version == 2
        set_alias(MODEL_NAME, "champion", 1)
        await served.reconfigure({"model_uri": champion_v1.champion, "max_batch_size": 3})  # any config change
        assert served.loaded().info.version == 1
        await served.reconfigure({"model_uri": f"models:/{MODEL_NAME}/2"})
        assert served.loaded().info.version == 2 and served.loaded().info.alias is None

    asyncio.run(scenario())


def test_failed_reload_keeps_the_served_version(champion_v1):
    served = ServedModel(champion_v1.tracking_uri, device="cpu")

    async def scenario():
        await served.reconfigure({"model_uri": champion_v1.champion})
        before = served.loaded()
        with pytest.raises(ValueError, match="no alias 'nope'"):
            await served.reload(f"models:/{MODEL_NAME}@nope", force=True)
        assert served.loaded() is before
        with pytest.raises(ValueError, match="no alias 'nope'"):
            await served.reconfigure({"model_uri": f"models:/{MODEL_NAME}@nope"})
        assert served.loaded() is before and served.settings.model_uri == champion_v1.champion

    asyncio.run(scenario())


def test_run_batch_runs_one_batch_per_tta_and_matches_the_predictor(champion_v1, tmp_path):
    from prism.inference.predictor import Predictor
    from prism.serve.model import Item

    predictor = Predictor.from_bundle(champion_v1.bundles[1], device="cpu")
    paths = sample_images(tmp_path / "img", n=3)
    ttas = [True, False, True]
    items = [Item(p.read_bytes(), p.name, predictor.prepare(p.read_bytes(), p.name, predictor.options(tta=t)),
                  id(predictor), predictor.options(tta=t)) for p, t in zip(paths, ttas, strict=True)]
    seen = []
    original = predictor.predict_prepared

    def record(prepared, options):
        seen.append((len(prepared), [o.tta for o in options], prepared[0][0]["image"].dtype))
        return original(prepared, options)

    predictor.predict_prepared = record
    got = run_batch(predictor, items)
    predictor.predict_prepared = original
    assert seen == [(1, [False], np.uint8), (2, [True, True], np.uint8)]
    for path, result, tta in zip(paths, got, [True, False, True], strict=True):
        (expected,) = predictor.predict([str(path)], tta=tta)
        for head in ("presence", "closure", "circularity"):
            np.testing.assert_allclose(list(result[head]["probabilities"].values()),
                                       list(expected[head]["probabilities"].values()), atol=1e-5)


def test_run_local_refuses_a_model_that_does_not_resolve_before_starting_ray(champion_v1, monkeypatch):
    import prism.runtime.ray_cluster
    from prism.config.schema import ConfigError
    from prism.serve import AppArgs, run_local
    from tests.conftest import ROOT

    # Ray may already run in this test session: what is checked is that run_local never asks for it
    ray_wanted: list[str] = []
    monkeypatch.setattr(prism.runtime.ray_cluster, "ensure_ray", lambda *a, **k: ray_wanted.append("ensure_ray"))
    config = ROOT / "serve_configs" / "circles.yaml"
    with pytest.raises(ConfigError, match="cannot serve 'models:/circles-serve@nope'.*aliases: champion -> v1"):
        run_local(config, tracking_uri=champion_v1.tracking_uri, model_uri=f"models:/{MODEL_NAME}@nope")
    with pytest.raises(ConfigError, match="no registered model 'circles'"):
        run_local(AppArgs(tracking_uri=champion_v1.tracking_uri), model_uri="models:/circles@champion")
    with pytest.raises(ConfigError, match="no model_uri: set user_config.model_uri"):
        run_local(AppArgs(tracking_uri=champion_v1.tracking_uri))  # a model is never guessed
    assert ray_wanted == []
