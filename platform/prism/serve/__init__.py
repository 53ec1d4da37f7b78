"""Ray Serve for Prism models of any task: the deployment, its HTTP API, the app builder and ``run_local``.

Modules, from the outside in::

    app.py          build_app(AppArgs) (the typed builder named by import_path), run_local, load_serve_config
    deployment.py   ModelServer: the HTTP API (FastAPI via @serve.ingress) over a ServedModel; OpenAPI
                    documents the served task's request options
    model.py        ServedModel: reconfigure, reload with an atomic version swap, batched inference
    batching.py     Batcher: images of concurrent requests → one forward pass (next batch = what queued meanwhile)
    payload.py      POST /predict request (multipart or JSON) → named image bytes + the task's options
    images.py       header-checked decoding (pixel limit before decode)
    schemas.py      request / response bodies (OpenAPI), built from the task's options model
    errors.py       the JSON error body and its status codes; 5xx bodies name no exception
    settings.py     ServeSettings (user_config: limits, batching, ReloadSettings), AppArgs (builder args)
    health.py       ModelHealth: batch outcomes, a probe when batches fail, Serve's health check
    proxy_retry.py  ReplicaLossRetry: the middleware in Serve's proxies that resends requests of dead replicas
    ingress.py      with_ingress: Serve's Python proxy (default) or HAProxy in front of direct-ingress replicas
    client.py       Client: the HTTP API from Python, retrying lost replicas (503) and connection failures

Configs live in ``serve_configs/`` (``serve run serve_configs/circles.yaml``). The names below load on first
use, so ``prism.serve.client`` imports neither Ray nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["AppArgs", "ClassesSettings", "ReloadSettings", "ServeSettings", "build_app", "load_serve_config", "run_local"]

_HOMES = {"build_app": "app", "load_serve_config": "app", "run_local": "app", "AppArgs": "settings",
          "ClassesSettings": "settings", "ReloadSettings": "settings", "ServeSettings": "settings"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"prism.serve.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'prism.serve' has no attribute {name!r}")
