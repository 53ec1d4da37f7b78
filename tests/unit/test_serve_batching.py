"""Serving without Ray: the replica's Batcher (batch formation, waits, errors) and per-request preparation.

The batcher tests drive :class:`prism.serve.batching.Batcher` with a fake batch function that records each
batch and the loop time it started at, and can be held "busy". They run on an event loop with virtual time
(looptime): timers fire as soon as nothing else can run and ``loop.time()`` advances by exactly what was
waited, so waits are asserted as exact loop times, never as wall-clock bounds. The preparation tests load a
fabricated bundle folder into a :class:`ServedModel` (no registry).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

import looptime
import numpy as np
import pytest

from prism.serve.batching import Batcher
from prism.serve.model import ServedModel, run_batch
from tests.helpers.bundles import IMG_SIZE, fabricate_bundle
from tests.helpers.images import bomb_png, sample_images

HEADS = ("presence", "closure", "circularity")


def run_virtual(coro: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run`` on a loop whose clock starts at 0 and only moves by the timers it fires."""
    with asyncio.Runner(loop_factory=lambda: looptime.new_event_loop(start=0.0)) as runner:
        return runner.run(coro)


class Model:
    """A fake batch function: records each batch and its start time; ``hold`` keeps the next batch running
    until released, ``busy_s`` makes every batch take that long (in loop time)."""

    def __init__(self, fail_on: object = None, extra_result: bool = False, busy_s: float = 0.0):
        self.batches: list[list] = []
        self.started: list[float] = []
        self.running = asyncio.Event()
        self.release: asyncio.Event | None = None
        self.fail_on = fail_on
        self.extra_result = extra_result
        self.busy_s = busy_s

    def hold(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        self.started.append(asyncio.get_running_loop().time())
        self.running.set()
        if self.release is not None:
            release, self.release = self.release, None
            await release.wait()
        if self.busy_s:
            await asyncio.sleep(self.busy_s)
        if self.fail_on in items:
            raise ValueError(f"cannot handle {self.fail_on!r}")
        return [f"r{i}" for i in items] + (["extra"] if self.extra_result else [])


async def _busy_then_queue(batcher: Batcher, model: Model, queued: list) -> list:
    """Item 0 starts a batch that stays busy while ``queued`` items arrive; then the batch is released."""
    model.hold()
    release = model.release
    first = asyncio.create_task(batcher.submit(0))
    await model.running.wait()
    rest = [asyncio.create_task(batcher.submit(i)) for i in queued]
    await asyncio.sleep(0)  # every new task runs up to its submit: all are queued, batch [0] still runs
    release.set()
    return await asyncio.gather(first, *rest)


def test_items_queued_while_a_batch_runs_form_the_next_batch():
    model = Model()
    batcher = Batcher(model, max_batch_size=16, batch_wait_timeout_s=0.0)
    results = run_virtual(_busy_then_queue(batcher, model, list(range(1, 11))))
    assert results == [f"r{i}" for i in range(11)]
    assert model.batches == [[0], list(range(1, 11))]  # one batch for everything that queued meanwhile
    assert (batcher.stats.batches, batcher.stats.items, dict(batcher.stats.sizes)) == (2, 11, {1: 1, 10: 1})


def test_max_batch_size_splits_the_queue_in_order():
    model = Model()
    batcher = Batcher(model, max_batch_size=16, batch_wait_timeout_s=0.0)
    run_virtual(_busy_then_queue(batcher, model, list(range(1, 41))))
    assert [len(b) for b in model.batches] == [1, 16, 16, 8]
    assert [i for b in model.batches for i in b] == list(range(41))
    assert dict(batcher.stats.sizes) == {1: 1, 16: 2, 8: 1} and batcher.stats.mean_size == 41 / 4


def test_a_lone_item_waits_for_the_timeout_then_runs_alone():
    model = Model()
    batcher = Batcher(model, max_batch_size=4, batch_wait_timeout_s=0.3)
    assert run_virtual(batcher.submit(7)) == "r7"
    assert model.batches == [[7]] and model.started == [pytest.approx(0.3)]


def test_items_arriving_during_the_wait_join_the_batch_until_the_oldest_waited_the_timeout():
    model = Model()
    batcher = Batcher(model, max_batch_size=8, batch_wait_timeout_s=1.0)

    async def scenario():
        async def at(t, item):
            await asyncio.sleep(t)
            return await batcher.submit(item)

        return await asyncio.gather(at(0.0, 1), at(0.4, 2), at(0.9, 3), at(1.2, 4))

    assert run_virtual(scenario()) == ["r1", "r2", "r3", "r4"]
    # 1, 2, 3 arrive within 1 s of item 1 and run at 1.0; item 4 (at 1.2) waits its own second: 2.2
    assert model.batches == [[1, 2, 3], [4]]
    assert model.started == [pytest.approx(1.0), pytest.approx(2.2)]


def test_a_lone_item_does_not_wait_with_a_zero_timeout():
    model = Model()
    batcher = Batcher(model, max_batch_size=32, batch_wait_timeout_s=0.0)
    run_virtual(batcher.submit(1))
    assert model.batches == [[1]] and model.started == [0.0]


def test_a_full_batch_runs_without_waiting():
    model = Model()
    batcher = Batcher(model, max_batch_size=4, batch_wait_timeout_s=5.0)
    results = run_virtual(batcher.submit_many([1, 2, 3, 4]))
    assert results == ["r1", "r2", "r3", "r4"] and model.batches == [[1, 2, 3, 4]]
    assert model.started == [0.0], "a full batch must not wait for the 5 s timeout"


def test_an_item_that_waited_through_a_busy_batch_does_not_wait_again():
    """The timeout counts from when the oldest item was queued, not from when the model became free."""
    wait, busy = 0.6, 0.8
    model = Model(busy_s=busy)
    batcher = Batcher(model, max_batch_size=2, batch_wait_timeout_s=wait)

    async def scenario():
        first = asyncio.create_task(batcher.submit_many([0, 10]))  # full: runs at once, busy until 0.8
        await model.running.wait()
        second = asyncio.create_task(batcher.submit(1))  # queued at 0.0, waited 0.8 > 0.6 by the time
        return await asyncio.gather(first, second)

    run_virtual(scenario())
    assert model.batches == [[0, 10], [1]]
    assert model.started == [0.0, pytest.approx(busy)], "item 1 waited again after the busy batch"


def test_a_failing_batch_fails_its_callers_and_the_next_batch_runs():
    model = Model(fail_on="bad")
    batcher = Batcher(model, max_batch_size=4, batch_wait_timeout_s=0.0)

    async def scenario():
        with pytest.raises(ValueError, match="cannot handle 'bad'"):
            await batcher.submit_many(["bad", "x"])
        return await batcher.submit("y")

    assert run_virtual(scenario()) == "ry"
    assert batcher.stats.batches == 2  # a failed batch still ran


def test_a_wrong_number_of_results_is_an_error():
    batcher = Batcher(Model(extra_result=True), max_batch_size=4)
    with pytest.raises(RuntimeError, match="returned 2 results for 1 items"):
        run_virtual(batcher.submit(1))


def test_a_cancelled_caller_is_left_out_of_the_batch():
    model = Model()
    batcher = Batcher(model, max_batch_size=8, batch_wait_timeout_s=0.0)

    async def scenario():
        model.hold()
        release = model.release
        first = asyncio.create_task(batcher.submit(0))
        await model.running.wait()
        gone = asyncio.create_task(batcher.submit(1))
        kept = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0)
        gone.cancel()
        release.set()
        return await asyncio.gather(first, kept)

    assert run_virtual(scenario()) == ["r0", "r2"]
    assert model.batches == [[0], [2]]


def test_configure_validates_and_applies_to_the_next_batch():
    model = Model()
    batcher = Batcher(model, max_batch_size=16)
    with pytest.raises(ValueError, match="max_batch_size must be >= 1, got 0"):
        batcher.configure(0, 0.0)
    with pytest.raises(ValueError, match="batch_wait_timeout_s must be >= 0, got -1"):
        batcher.configure(2, -1)
    batcher.configure(2, 0.0)
    run_virtual(_busy_then_queue(batcher, model, [1, 2, 3]))
    assert model.batches == [[0], [1, 2], [3]]


def test_one_batcher_serves_successive_event_loops_and_close_cancels_waiters():
    model = Model()
    batcher = Batcher(model, max_batch_size=4)
    assert run_virtual(batcher.submit(1)) == "r1"
    assert run_virtual(batcher.submit(2)) == "r2"  # a new loop gets a new consumer

    async def closed():
        model.hold()
        waiting = asyncio.create_task(batcher.submit(3))
        await model.running.wait()
        queued = asyncio.create_task(batcher.submit(4))
        await asyncio.sleep(0)
        batcher.close()
        return await asyncio.gather(waiting, queued, return_exceptions=True)

    model.running.clear()
    outcomes = run_virtual(closed())
    assert len(outcomes) == 2 and all(isinstance(o, asyncio.CancelledError) for o in outcomes)


# ------------------------------------------------------------------------------ per-request preparation


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return fabricate_bundle(tmp_path_factory.mktemp("bundle"), seed=1)


@pytest.fixture
def served(bundle, tmp_path, monkeypatch):
    """A ServedModel holding the bundle folder (unregistered: no registry lookup); MLflow's URIs restored."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unused")  # so monkeypatch restores what MLflow exports
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "unused")
    model = ServedModel(f"sqlite:///{tmp_path}/mlflow.db", device="cpu")
    asyncio.run(model.reconfigure({"model_uri": str(bundle), "max_batch_size": 8}))
    yield model
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.fixture
def files(tmp_path):
    return [p.read_bytes() for p in sample_images(tmp_path / "img", n=3)]


def count_prepare(predictor, monkeypatch) -> list[str]:
    """Names of the images ``predictor.prepare`` (decode + the task's preprocess) is called on from now."""
    calls: list[str] = []
    original = predictor.prepare

    def counted(image, name="<image>", options=None):
        calls.append(name)
        return original(image, name, options)

    monkeypatch.setattr(predictor, "prepare", counted)
    return calls


def opts(served, tta: bool):
    return served.request_options({"tta": tta})


def assert_same(got, expected):
    for g, e in zip(got, expected, strict=True):
        for head in HEADS:
            assert g[head]["prediction"] == e[head]["prediction"]
            np.testing.assert_allclose(list(g[head]["probabilities"].values()),
                                       list(e[head]["probabilities"].values()), atol=1e-5)


def test_prepare_preprocesses_once_per_request_and_the_batch_only_stacks(served, files, monkeypatch):
    predictor = served.loaded().predictor
    calls = count_prepare(predictor, monkeypatch)
    ttas = [False, True, False]
    prepared = [served.prepare(data, f"f{i}", opts(served, t)) for i, (data, t) in enumerate(zip(files, ttas, strict=True))]
    assert calls == ["f0", "f1", "f2"]
    assert all(it.prepared[0]["image"].shape == (IMG_SIZE, IMG_SIZE, 3) for it in prepared)
    got = run_batch(predictor, prepared)
    assert calls == ["f0", "f1", "f2"], "the batch must not decode or preprocess prepared images again"
    expected = [predictor.predict([data], tta=tta)[0] for data, tta in zip(files, ttas, strict=True)]
    assert_same(got, expected)


def test_run_batch_prepares_again_what_another_version_prepared(served, files, monkeypatch):
    """E.g. images prepared by a version (maybe of another input size) swapped out before their batch ran."""
    from prism.serve.model import Item

    predictor = served.loaded().predictor
    fresh = served.prepare(files[0], "f0", opts(served, False))
    stale = Item(files[1], "f1", ({"image": np.zeros((IMG_SIZE * 2, IMG_SIZE * 2, 3), np.uint8)}, {}),
                 prepared_by=-1, options=opts(served, False))
    calls = count_prepare(predictor, monkeypatch)
    got = run_batch(predictor, [stale, fresh])
    assert calls == ["f1"] and len(got) == 2
    assert_same(got, predictor.predict([files[1], files[0]], tta=False))


def test_by_default_a_lone_image_does_not_wait_for_a_batch(served):
    """Images that queue while a batch runs form the next batch anyway, so the default wait is none."""
    assert served.settings.batch_wait_timeout_s == 0.0
    assert (served.batcher.max_batch_size, served.batcher.batch_wait_timeout_s) == (8, 0.0)


def test_predict_images_through_the_batcher_matches_the_predictor(served, files):
    predictor = served.loaded().predictor
    prepared = [served.prepare(data, f"f{i}", opts(served, True)) for i, data in enumerate(files)]

    async def concurrent():
        return await asyncio.gather(served.predict_images(prepared[:2]), served.predict_images(prepared[2:]))

    first, second = asyncio.run(concurrent())
    assert_same([*first, *second], predictor.predict(files, tta=True))
    stats = served.batching_stats()  # GET /stats
    assert stats.images == 3 and sum(n * c for n, c in stats.batch_sizes.items()) == 3
    assert stats.batches == sum(stats.batch_sizes.values()) and stats.mean_batch_size == 3 / stats.batches


def test_prepare_checks_the_pixel_limit_before_decoding(served, files):
    from prism.serve.errors import RequestError

    with pytest.raises(RequestError) as info:
        served.prepare(bomb_png(5000, 5000), "bomb.png", opts(served, False), max_pixels=1000)
    assert (info.value.status, info.value.error) == (413, "image_too_large")
    with pytest.raises(RequestError) as info:
        served.prepare(files[0], "small.png", opts(served, False), max_pixels=10)
    assert info.value.status == 413


def test_a_batch_does_not_queue_behind_decoding_in_the_default_thread_pool(served, files):
    """Decoding (``prepare``) uses asyncio's default pool; the model has its own thread, so a pool busy
    decoding large images does not hold up a batch that is ready to run. The pool's only worker is blocked
    until the prediction has returned: were the batch queued behind it, it could never return."""
    from concurrent.futures import ThreadPoolExecutor

    prepared = [served.prepare(files[0], "f0", opts(served, False))]
    unblock = threading.Event()

    async def scenario():
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        blocker = asyncio.ensure_future(asyncio.to_thread(unblock.wait, 60))  # the pool's only worker, busy
        try:
            result = await asyncio.wait_for(served.predict_images(prepared), 30)
            blocked_meanwhile = not blocker.done()
        finally:
            unblock.set()
        await blocker
        return result, blocked_meanwhile

    result, blocked_meanwhile = asyncio.run(scenario())
    assert len(result) == 1 and blocked_meanwhile
