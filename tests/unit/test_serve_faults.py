"""Serve under faults, without Ray: the proxy middleware that resends requests of dead replicas, and the health
check that fails a replica whose model is broken."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from prism.serve.health import ModelHealth, NonFiniteOutput, check_finite
from prism.serve.proxy_retry import RETRY_HEADER, ReplicaLossRetry, proxy_middlewares
from tests.helpers.bundles import fabricate_bundle
from tests.helpers.images import png

# ------------------------------------------------------------------------------------- proxy middleware


class Replicas:
    """An inner ASGI app standing in for Serve's proxy handler: the first ``dead`` calls end without a response
    (a replica that died, as Serve's proxy ends them) or raise; later calls echo the body they received."""

    def __init__(self, dead: int = 0, mode: str = "silent", status: int = 200):
        self.dead = dead
        self.mode = mode
        self.status = status
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        if len(self.bodies) <= self.dead:
            if self.mode == "raise":
                raise RuntimeError("ActorDiedError: the actor died unexpectedly")
            return
        out = json.dumps({"n": len(body)}).encode()
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": out})


def drive(app, body: bytes, chunk: int = 1 << 30, disconnect_after_body: bool = False):
    """Send ``body`` (in chunks) through ``app`` as an HTTP POST; → (status, headers, body, messages sent).

    After the body the client's ``receive`` waits, as a server's does, until the response is complete; with
    ``disconnect_after_body`` it reports the client gone instead.
    """
    parts = [body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]
    sent: list[dict] = []

    async def run():
        done = asyncio.Event()
        queue = list(parts)

        async def receive():
            if queue:
                part = queue.pop(0)
                return {"type": "http.request", "body": part, "more_body": bool(queue)}
            if disconnect_after_body:
                return {"type": "http.disconnect"}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
        await app(scope, receive, send)

    asyncio.run(run())
    if not sent:
        return None, {}, b"", sent
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in sent[1:]), sent


@pytest.mark.parametrize("mode", ["silent", "raise"])
def test_a_request_whose_replica_died_is_sent_again_with_the_same_body(mode):
    replicas = Replicas(dead=2, mode=mode)
    body = png() * 50
    status, headers, out, _ = drive(ReplicaLossRetry(replicas, attempts=4, backoff_s=0.0), body, chunk=1000)
    assert status == 200 and json.loads(out) == {"n": len(body)}
    assert headers[RETRY_HEADER] == "2"
    assert replicas.bodies == [body] * 3


def test_an_answer_at_the_first_attempt_passes_through_once():
    replicas = Replicas()
    status, headers, out, sent = drive(ReplicaLossRetry(replicas, backoff_s=0.0), b"abc")
    assert (status, headers[RETRY_HEADER], json.loads(out)) == (200, "0", {"n": 3})
    assert len(replicas.bodies) == 1 and len(sent) == 2


def test_an_application_error_is_an_answer_and_never_retried():
    replicas = Replicas(status=500)
    status, _, _, _ = drive(ReplicaLossRetry(replicas, backoff_s=0.0), b"abc")
    assert status == 500 and len(replicas.bodies) == 1


def test_when_no_replica_answers_the_client_gets_a_retryable_503():
    replicas = Replicas(dead=10)
    status, headers, out, _ = drive(ReplicaLossRetry(replicas, attempts=3, backoff_s=0.0, retry_after_s=2), b"x")
    assert status == 503 and headers["retry-after"] == "2"
    body = json.loads(out)
    assert body["error"] == "replica_unavailable" and body["request_id"] in body["detail"]
    assert len(replicas.bodies) == 3


def test_the_retry_budget_bounds_the_back_off():
    replicas = Replicas(dead=10)
    status, _, _, _ = drive(ReplicaLossRetry(replicas, attempts=10, backoff_s=0.01, budget_s=0.025), b"x")
    assert status == 503
    assert len(replicas.bodies) == 2  # waits of 0.01 then 0.02 s: the second would end past 0.025 s


def test_a_client_that_left_is_not_retried():
    replicas = Replicas(dead=10)
    status, _, _, sent = drive(ReplicaLossRetry(replicas, backoff_s=0.001), b"x", disconnect_after_body=True)
    assert status is None and sent == []
    assert len(replicas.bodies) == 1


def test_a_body_over_the_limit_is_streamed_through_once():
    replicas = Replicas(dead=1)
    body = b"y" * 5000
    status, _, _, sent = drive(ReplicaLossRetry(replicas, backoff_s=0.0, max_body_bytes=1000), body, chunk=600)
    assert replicas.bodies == [body]  # every byte reached the one attempt
    assert status is None and sent == []  # that attempt died: Serve's own 500 follows, as without the middleware


def test_other_protocols_pass_through():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(ReplicaLossRetry(app)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]


def test_the_proxy_callback_reads_its_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("PRISM_PROXY_RETRY_ATTEMPTS", "7")
    (middleware,) = proxy_middlewares()
    assert middleware.cls is ReplicaLossRetry and middleware.kwargs["attempts"] == 7
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        ReplicaLossRetry(Replicas(), attempts=0)


# ----------------------------------------------------------------------------------------- health check


def test_check_finite_names_the_first_non_finite_number():
    check_finite([{"a": {"p": [0.1, 0.9]}, "name": "x.png", "n": 3}])
    with pytest.raises(NonFiniteOutput, match=r"result\[1\]\.a\.p\[1\]"):
        check_finite([{"a": {"p": [0.1]}}, {"a": {"p": [0.2, float("nan")]}}])
    with pytest.raises(NonFiniteOutput, match=r"result\[0\]\.s"):
        check_finite([{"s": float("inf")}])


def test_without_a_probe_a_replica_turns_unhealthy_after_the_threshold():
    health: ModelHealth[int] = ModelHealth(threshold=2)

    async def never(items):
        raise AssertionError("no probe to run")

    health.failed(RuntimeError("boom"))
    asyncio.run(health.check(never))
    health.failed(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="2 batches failed in a row and none ever succeeded; last: RuntimeError"):
        asyncio.run(health.check(never))
    health.reset()
    asyncio.run(health.check(never))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return fabricate_bundle(tmp_path_factory.mktemp("bundle") / "a", seed=1)


@pytest.fixture
def served(bundle, tmp_path, monkeypatch):
    import mlflow

    from prism.serve.model import ServedModel

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unused")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "unused")
    model = ServedModel(f"sqlite:///{tmp_path}/mlflow.db", device="cpu")
    asyncio.run(model.reconfigure({"model_uri": str(bundle), "max_batch_size": 4, "tta": False}))
    yield model
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def predict(served, n: int = 2):
    options = served.request_options({})
    items = [served.prepare(png((30 + i, 20)), f"{i}.png", options) for i in range(n)]
    return asyncio.run(served.predict_images(items))


def test_a_model_whose_weights_went_non_finite_fails_its_health_check(served):
    from prism.serve.errors import RequestError

    good = predict(served)
    asyncio.run(served.check_health())
    params = [p for p in served.loaded().predictor.model.parameters() if p.dtype.is_floating_point]
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.fill_(float("nan"))
    with pytest.raises(NonFiniteOutput):
        predict(served)
    with pytest.raises(RuntimeError, match="a request it answered before fails now too"):
        asyncio.run(served.check_health())
    with pytest.raises(RequestError) as refused:
        predict(served)
    assert (refused.value.status, refused.value.error) == (503, "model_unhealthy")
    assert refused.value.headers == {"Retry-After": "1"}
    with torch.no_grad():  # the fault goes away: the next check finds the model working again
        for p, s in zip(params, saved, strict=True):
            p.copy_(s)
    asyncio.run(served.check_health())
    assert predict(served) == good


def test_a_model_that_raises_on_every_batch_fails_its_health_check(served, monkeypatch):
    predict(served)
    predictor = served.loaded().predictor

    def lost(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(predictor, "predict_prepared", lost)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        predict(served)
    with pytest.raises(RuntimeError, match="1 batches failed .*CUDA error"):
        asyncio.run(served.check_health())


def test_a_failure_of_one_input_leaves_the_replica_healthy(served, monkeypatch):
    predict(served)
    predictor = served.loaded().predictor
    real = predictor.predict_prepared
    calls = {"n": 0}

    def once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("an input the model could not take")
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor, "predict_prepared", once)
    with pytest.raises(RuntimeError, match="could not take"):
        predict(served)
    assert served.health.failures == 1
    asyncio.run(served.check_health())  # the probe (a request answered before) works
    assert served.health.failures == 0 and served.health.unhealthy is None
    assert len(predict(served)) == 2
