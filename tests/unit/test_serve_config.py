"""Serve configs and request handling without a Serve instance: schema, settings, payloads, image checks."""

from __future__ import annotations

import asyncio
import base64
import importlib
import inspect
import json

import pytest
import requests
import yaml
from ray.serve.schema import ServeDeploySchema
from starlette.requests import Request

from prism.config.schema import ConfigError
from prism.serve import AppArgs, ServeSettings, load_serve_config
from prism.serve.app import BUILDER, DEPLOYMENT
from prism.serve.errors import RequestError
from prism.serve.images import decode_base64, open_checked
from prism.serve.payload import parse_options, read_payload
from prism.tasks.multihead.task import MultiHeadOptions
from tests.conftest import ROOT
from tests.helpers.images import bomb_png, png

CONFIG = ROOT / "serve_configs" / "circles.yaml"


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(("name", "model"), [("circles.yaml", "circles"), ("classify.yaml", "sketches"),
                                             ("features.yaml", "faces-pca"), ("detect.yaml", "shapes-detect"),
                                             ("segment.yaml", "shapes-textseg")])
def test_shipped_configs_are_valid_serve_configs_with_resolvable_builder(name, model):
    schema = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve_configs" / name).read_text()))
    (app,) = schema.applications
    assert app.import_path == BUILDER
    module, attr = app.import_path.split(":")
    builder = getattr(importlib.import_module(module), attr)
    (param,) = inspect.signature(builder).parameters.values()
    assert param.annotation is AppArgs  # Serve validates `args` into it (a typed builder)
    AppArgs.model_validate(app.args)
    (dep,) = app.deployments
    assert dep.name == DEPLOYMENT
    settings = ServeSettings.model_validate(dep.user_config)
    assert settings.model_uri == f"models:/{model}@champion" and app.name == model
    assert settings.max_request_bytes == 32 * 1024 * 1024
    if settings.reload.enabled and settings.reload.token_env is None:  # an open POST /reload: loopback only
        assert schema.http_options.host == "127.0.0.1", "set reload.token_env before listening beyond loopback"
    auto = dep.autoscaling_config
    assert auto["min_replicas"] <= auto["max_replicas"] and auto["target_ongoing_requests"] > 0
    assert dep.max_ongoing_requests >= settings.max_batch_size


def test_load_serve_config_applies_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    schema = load_serve_config(CONFIG, model_uri="models:/circles/7", port=8123, host="127.0.0.1")
    assert schema.http_options.port == 8123
    (app,) = schema.applications
    assert app.args["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"  # absolute, for other processes
    user_config = app.deployments[0].user_config
    assert user_config["model_uri"] == "models:/circles/7"
    assert user_config["max_batch_size"] == 16  # the rest of the file's user_config is kept


def test_load_serve_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Serve config not found"):
        load_serve_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"applications": [{"import_path": BUILDER, "route_prefix": 3}]}))
    with pytest.raises(ConfigError, match="not a valid Serve config"):
        load_serve_config(bad)
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"applications": [{"import_path": "x:y"}]}))
    with pytest.raises(ConfigError, match=BUILDER):
        load_serve_config(other)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_batch_size", 0, "greater than or equal to 1"),
        ("batch_wait_timeout_s", -1, "greater than or equal to 0"),
        ("model_uri", " ", "model_uri is empty"),
        ("options", 3, "valid dictionary"),
        ("max_batch", 8, "Extra inputs are not permitted"),
        ("max_request_bytes", 0, "greater than or equal to 1"),
        ("reload", {"token_env": "my token"}, "token_env must name an environment variable"),
        ("reload", {"token_env": "$PRISM_TOKEN"}, "e.g. PRISM_RELOAD_TOKEN"),
        ("reload", {"token": "s3cret"}, "Extra inputs are not permitted"),
    ],
)
def test_settings_reject_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        ServeSettings.model_validate({field: value})


# ------------------------------------------------------------------------------------------ images


def test_open_checked_decodes_rgb():
    img = open_checked(png((20, 10)), "a.png", max_pixels=200)
    assert img.mode == "RGB" and img.size == (20, 10)


@pytest.mark.parametrize(
    ("data", "max_pixels", "status", "error", "message"),
    [
        (b"", 100, 400, "undecodable_image", "empty file"),
        (b"not an image at all", 100, 400, "undecodable_image", "not an image PIL can read"),
        (png((20, 10))[:50], 1000, 400, "undecodable_image", "image file is truncated"),
        (png((20, 10)), 199, 413, "image_too_large", "20x10 = 200 pixels is over max_image_pixels=199"),
        (bomb_png(8000, 8000), 10**6, 413, "image_too_large", "8000x8000 = 64000000 pixels"),  # not decoded
        (bomb_png(100_000, 100_000), 10**12, 413, "image_too_large", "decompression bomb"),  # PIL's own limit
    ],
    ids=["empty", "garbage", "truncated", "over-limit", "bomb", "pil-bomb"],
)
def test_open_checked_errors(data, max_pixels, status, error, message):
    with pytest.raises(RequestError, match=message) as info:
        open_checked(data, "x.png", max_pixels)
    assert (info.value.status, info.value.error) == (status, error)


def test_decode_base64_plain_data_url_and_invalid():
    raw = png()
    text = base64.b64encode(raw).decode()
    assert decode_base64(text, "i") == raw
    assert decode_base64("data:image/png;base64," + text, "i") == raw
    with pytest.raises(RequestError, match="images\\[2\\]: not valid base64"):
        decode_base64("@@@", "images[2]")


def test_request_options_are_the_tasks_over_the_deployment_defaults():
    got = parse_options(MultiHeadOptions, {"tta": True, "top_k": 3}, {"tta": "false"})
    assert (got.tta, got.top_k) == (False, 3)
    assert parse_options(MultiHeadOptions, {"tta": True}, {"top_k": None}).top_k is None  # unset → default
    for raw, message in (({"colour": "red"}, "colour: Extra inputs"), ({"top_k": "zero"}, "top_k")):
        with pytest.raises(RequestError, match=message) as info:
            parse_options(MultiHeadOptions, {}, raw)
        assert (info.value.status, info.value.error) == (400, "invalid_request")
        assert "this model accepts ['top_k', 'tta']" in info.value.detail


# ----------------------------------------------------------------------------------------- payload


def request(body: bytes, content_type: str | None) -> Request:
    headers = [] if content_type is None else [(b"content-type", content_type.encode())]
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/predict", "headers": headers}, receive)


def multipart(files: list[tuple[str, bytes]], data: dict | None = None) -> Request:
    parts = [("images", (n, b, "image/png")) for n, b in files]
    parts += [(k, (None, v)) for k, v in (data or {}).items()]  # form fields, multipart even without files
    prepared = requests.Request("POST", "http://x/predict", files=parts).prepare()
    return request(prepared.body, prepared.headers["Content-Type"])


def test_read_payload_multipart_and_json():
    p = asyncio.run(read_payload(multipart([("a.png", b"1"), ("b.png", b"2")], {"tta": "false", "top_k": "2"}), 4))
    assert (p.names, p.images, p.options) == (["a.png", "b.png"], [b"1", b"2"], {"tta": "false", "top_k": "2"})
    opts = parse_options(MultiHeadOptions, {}, p.options)  # form strings become the task's typed options
    assert (opts.tta, opts.top_k) == (False, 2)
    body = {"images": [base64.b64encode(b"xy").decode()], "names": ["n"], "tta": True}
    p = asyncio.run(read_payload(request(json.dumps(body).encode(), "application/json"), 4))
    assert (p.names, p.images, p.options) == (["n"], [b"xy"], {"tta": True})



def test_form_class_lists_repeated_comma_separated_or_json():
    from prism.tasks.classify.task import ClassifyOptions

    parts = [("images", ("a.png", b"1", "image/png")), ("classes", (None, "a cat")), ("classes", (None, "a dog"))]
    prepared = requests.Request("POST", "http://x/predict", files=parts).prepare()
    p = asyncio.run(read_payload(request(prepared.body, prepared.headers["Content-Type"]), 4))
    assert p.options == {"classes": ["a cat", "a dog"]}
    for raw in (p.options, {"classes": "a cat,a dog"}, {"classes": '["a cat", "a dog"]'}):
        assert parse_options(ClassifyOptions, {}, raw).classes == ["a cat", "a dog"]
    with pytest.raises(RequestError, match="not a JSON list"):
        parse_options(ClassifyOptions, {}, {"classes": '["a cat",'})
    with pytest.raises(RequestError, match="at least 2"):
        parse_options(ClassifyOptions, {}, {"classes": "cat"})

@pytest.mark.parametrize(
    ("make", "status", "error", "message"),
    [
        (lambda: request(b"", None), 400, "empty_body", "empty request"),
        (lambda: request(b"", "application/json"), 400, "empty_body", "empty JSON body"),
        (lambda: request(b'{"images": []}', "application/json"), 400, "empty_body", "is empty"),
        (lambda: request(b'{"imgs": ["x"]}', "application/json"), 400, "invalid_request", "images: Field required"),
        (lambda: request(b'{"images": ["eA=="], "names": ["a", "b"]}', "application/json"), 400,
         "invalid_request", "2 names for 1 images"),
        (lambda: request(b'{"images": ["eA==", "eA==", "eA=="]}', "application/json"), 413, "too_many_images",
         "3 images in one request, max_images_per_request=2"),
        (lambda: request(b"abc", "text/plain"), 415, "unsupported_media", "'text/plain' is not accepted"),
        (lambda: multipart([], {"tta": "true"}), 400, "empty_body", "no image files"),
        (lambda: multipart([("a", b"1"), ("b", b"2"), ("c", b"3")]), 413, "too_many_images", "more than 2"),
        (lambda: request(b"--x\r\n", "multipart/form-data"), 400, "invalid_request", "malformed multipart"),
    ],
    ids=["no-body", "empty-json", "no-images", "schema", "names", "too-many-json", "content-type",
         "no-files", "too-many-files", "no-boundary"],
)
def test_read_payload_errors(make, status, error, message):
    with pytest.raises(RequestError, match=message) as info:
        asyncio.run(read_payload(make(), max_images=2))
    assert (info.value.status, info.value.error) == (status, error)


def test_a_user_config_the_replicas_would_refuse_fails_before_deploying(tmp_path):
    """Serve stops a replica whose reconfigure raises; prism checks each Prism app's user_config first."""
    from prism.serve.app import _served_models

    raw = yaml.safe_load(CONFIG.read_text())
    deployment = next(d for d in raw["applications"][0]["deployments"] if d["name"] == DEPLOYMENT)
    deployment["user_config"]["max_batch_size"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert _served_models(load_serve_config(CONFIG))  # the shipped config passes
    with pytest.raises(ConfigError, match=r"(?s)user_config of .* is invalid.*max_batch_size"):
        _served_models(load_serve_config(bad))
