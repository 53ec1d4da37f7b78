"""What Serve refuses and what it keeps to itself, without Ray: body limits, 5xx bodies, POST /reload auth,
and a ``reconfigure`` that applies a ``user_config`` completely or not at all.

The ServedModel tests load fabricated bundle folders (no registry); the HTTP tests run FastAPI apps
in-process (``tests/helpers/asgi.py``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import pytest
import requests
from fastapi import FastAPI
from pydantic import ValidationError

from prism.serve.errors import RequestError, install_error_handlers
from prism.serve.model import ServedModel
from prism.serve.payload import read_payload
from prism.serve.settings import MAX_REQUEST_BYTES, ServeSettings
from tests.helpers.asgi import Body, call, request
from tests.helpers.bundles import fabricate_bundle
from tests.helpers.images import png

TOKEN_ENV = "PRISM_TEST_RELOAD_TOKEN"


def test_default_body_limit_is_32_mib():
    assert ServeSettings().max_request_bytes == MAX_REQUEST_BYTES == 32 * 1024 * 1024


# ------------------------------------------------------------------------------------------ body size


def json_body(n_images: int) -> bytes:
    return json.dumps({"images": [base64.b64encode(png()).decode()] * n_images}).encode()


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    body = Body([json_body(1)])
    headers = {"content-type": "application/json", "content-length": str(len(body.chunks[0]))}
    with pytest.raises(RequestError, match=rf"body of {len(body.chunks[0])} bytes, max_request_bytes=100") as info:
        asyncio.run(read_payload(request(body, headers), max_images=4, max_bytes=100))
    assert (info.value.status, info.value.error) == (413, "body_too_large")
    assert body.sent == 0


def multipart_body(n_images: int) -> tuple[bytes, str]:
    """A multipart/form-data body of ``n_images`` PNG files and its Content-Type (with the boundary)."""
    files = [("images", (f"{i}.png", png(), "image/png")) for i in range(n_images)]
    prepared = requests.Request("POST", "http://x/predict", files=files).prepare()
    return prepared.body, prepared.headers["Content-Type"]


@pytest.mark.parametrize("kind", ["json", "multipart"])
def test_a_chunked_body_is_cut_off_at_the_first_chunk_past_the_limit(kind):
    """No Content-Length: the bytes are counted as they arrive, and nothing after the limit is read."""
    raw, content_type = (json_body(4), "application/json") if kind == "json" else multipart_body(4)
    body = Body([raw[i:i + 60] for i in range(0, len(raw), 60)])
    assert len(body.chunks) > 3
    with pytest.raises(RequestError, match="more than 100 bytes, max_request_bytes=100") as info:
        asyncio.run(read_payload(request(body, {"content-type": content_type}), max_images=4, max_bytes=100))
    assert (info.value.status, info.value.error) == (413, "body_too_large")
    assert body.sent == 2


def test_a_body_of_exactly_the_limit_is_read():
    raw = json_body(2)
    body = Body([raw[:50], raw[50:]])
    payload = asyncio.run(read_payload(request(body, {"content-type": "application/json"}), max_images=4,
                                       max_bytes=len(raw)))
    assert payload.images == [png(), png()]


# ------------------------------------------------------------------------------------------ 5xx bodies


def failing_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom():
        raise RuntimeError("cannot open sqlite:////srv/secret/mlflow.db as admin:hunter2")

    return app


def test_a_500_names_no_exception_and_the_log_has_it_under_the_request_id(caplog):
    with caplog.at_level(logging.ERROR, logger="prism.serve.errors"):
        answer = call(failing_app(), "GET", "/boom", headers={"x-request-id": "req-42"})
    assert answer.status == 500
    assert answer.json() == {"error": "internal", "request_id": "req-42",
                             "detail": "internal error; the server log has the details under request id req-42"}
    (record,) = [r for r in caplog.records if r.name == "prism.serve.errors"]
    assert "req-42" in record.getMessage() and "/boom" in record.getMessage()
    assert "hunter2" in str(record.exc_info[1])  # the operator sees it, the client does not


def test_a_500_without_a_request_id_gets_a_fresh_one(caplog):
    with caplog.at_level(logging.ERROR, logger="prism.serve.errors"):
        first = call(failing_app(), "GET", "/boom").json()
        second = call(failing_app(), "GET", "/boom").json()
    assert first["request_id"] != second["request_id"]
    assert first["request_id"] in caplog.text and first["request_id"] in first["detail"]
    assert "hunter2" not in json.dumps(first)


# ---------------------------------------------------------------------------------- served model state


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    return fabricate_bundle(root / "a", seed=1), fabricate_bundle(root / "b", seed=2)


@pytest.fixture
def served(bundles, tmp_path, monkeypatch):
    """A ServedModel holding bundle ``a`` with max_batch_size 8; MLflow's URIs restored after."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unused")  # so monkeypatch restores what MLflow exports
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "unused")
    model = ServedModel(f"sqlite:///{tmp_path}/mlflow.db", device="cpu")
    asyncio.run(model.reconfigure({"model_uri": str(bundles[0]), "max_batch_size": 8}))
    yield model
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def state(served: ServedModel) -> tuple:
    return served.loaded(), served.settings, served.batcher.max_batch_size, served.batcher.batch_wait_timeout_s


@pytest.mark.parametrize(
    ("user_config", "error", "message"),
    [
        ({"model_uri": "/no/such/bundle", "max_batch_size": 3, "batch_wait_timeout_s": 0.5}, ValueError,
         "no directory"),
        ({"model_uri": "{b}", "max_batch_size": 3, "reload": {"enabled": True, "token_env": TOKEN_ENV}},
         ValueError, f"{TOKEN_ENV}' but that environment variable is unset"),
        ({"model_uri": "{b}", "max_batch_size": 0}, ValidationError, "greater than or equal to 1"),
    ],
    ids=["model-does-not-load", "token-env-unset", "invalid-setting"],
)
def test_a_bad_user_config_leaves_model_and_settings_as_they_were(served, bundles, monkeypatch, user_config,
                                                                  error, message):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    user_config = {**user_config, "model_uri": user_config["model_uri"].format(b=bundles[1])}
    before = state(served)
    with pytest.raises(error, match=message):
        asyncio.run(served.reconfigure(user_config))
    after = state(served)
    assert after[0] is before[0]  # the same loaded version object: nothing was swapped
    assert after[1:] == before[1:] == (ServeSettings(model_uri=str(bundles[0]), max_batch_size=8), 8, 0.0)


def test_a_good_user_config_applies_model_limits_and_token_together(served, bundles, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    asyncio.run(served.reconfigure({"model_uri": str(bundles[1]), "max_batch_size": 3, "batch_wait_timeout_s": 0.5,
                                    "reload": {"enabled": True, "token_env": TOKEN_ENV}}))
    loaded, settings, size, wait = state(served)
    assert (loaded.info.uri, settings.max_batch_size, size, wait) == (str(bundles[1]), 3, 3, 0.5)
    served.authorize_reload("s3cret")


# ---------------------------------------------------------------------------------------- POST /reload


def configure_reload(served: ServedModel, bundle, **reload) -> None:
    asyncio.run(served.reconfigure({"model_uri": str(bundle), "reload": reload}))


def assert_refused(served: ServedModel, token: str | None, status: int, error: str, message: str) -> RequestError:
    with pytest.raises(RequestError, match=message) as info:
        served.authorize_reload(token)
    assert (info.value.status, info.value.error) == (status, error)
    return info.value


def test_reload_is_off_by_default(served):
    assert ServeSettings().reload.enabled is False
    assert_refused(served, None, 403, "reload_disabled", "reload.enabled: false")
    assert_refused(served, "anything", 403, "reload_disabled", "serve deploy")


def test_reload_enabled_without_a_token_is_open(served, bundles):
    configure_reload(served, bundles[0], enabled=True)
    served.authorize_reload(None)
    served.authorize_reload("ignored")


def test_reload_with_a_token_needs_exactly_that_bearer_token(served, bundles, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    configure_reload(served, bundles[0], enabled=True, token_env=TOKEN_ENV)
    missing = assert_refused(served, None, 401, "missing_token", f"Authorization: Bearer <token>.*{TOKEN_ENV}")
    assert missing.response().headers["www-authenticate"] == "Bearer"
    wrong = assert_refused(served, "s3cre", 403, "invalid_token", f"not the one in {TOKEN_ENV}")
    assert "s3cret" not in wrong.detail
    served.authorize_reload("s3cret")
    # the token is read when the settings are applied: a changed variable needs a reconfigure
    monkeypatch.setenv(TOKEN_ENV, "rotated")
    assert_refused(served, "rotated", 403, "invalid_token", TOKEN_ENV)
    configure_reload(served, bundles[0], enabled=True, token_env=TOKEN_ENV)
    served.authorize_reload("rotated")
    assert "rotated" not in served.settings.model_dump_json()  # GET /settings shows the variable's name only


def test_disabling_reload_wins_over_a_token(served, bundles, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    configure_reload(served, bundles[0], enabled=False, token_env=TOKEN_ENV)
    assert_refused(served, "s3cret", 403, "reload_disabled", "disabled")
