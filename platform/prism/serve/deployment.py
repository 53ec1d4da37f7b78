"""The model deployment: the HTTP API (FastAPI, ``@serve.ingress``) over a :class:`ServedModel`, for any task.

Routes (OpenAPI at ``/docs`` and ``/openapi.json``)::

    POST /predict   images (multipart files or JSON base64) + the task's options → [{"image", <task fields>}]
    GET  /healthz   {"status": "ok", "model": "circles v3"}
    GET  /models    the served version: name, version, alias, run_id, metric, …  (ModelInfo)
    GET  /settings  the replica's ServeSettings (user_config): limits, batching, defaults
    GET  /stats     the replica's batches so far: count, images, size histogram (BatchingStats)
    POST /reload    re-resolve model_uri (after an alias moved) and swap versions on this replica
                    (off unless user_config reload.enabled; Authorization: Bearer <token> if reload.token_env)
    GET  /classes   the served classes: trained, saved zero-shot, added while serving (a classifier)
    POST /classes   a new class from a few example images (name + images), for every replica; predicted
                    with zero_shot=true (off unless user_config classes.enabled; token as reload's)
    DELETE /classes/{name}   drop an added class

``POST /predict``: :func:`read_payload` (body size, content type, image count) → the request's options
checked against the served task's options model (:meth:`ServedModel.request_options`) → in a worker thread,
decoding with the pixel check and the task's preprocessing (:meth:`ServedModel.prepare`) →
:meth:`ServedModel.predict_images` (the replica's :class:`~prism.serve.batching.Batcher`). Bad
input is a 4xx ``{"error", "detail"}`` raised before the model is touched; a 5xx names no exception (see
``errors.py``). ``POST /reload`` reaches one replica; changing the ``user_config`` (``serve deploy``) calls
``reconfigure`` on every replica.

No ``from __future__ import annotations`` here: Serve re-creates the route functions for its class-based
views, and FastAPI must still see the real ``Request`` / response annotations.
"""

import asyncio
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve

from prism.serve.errors import RequestError, install_error_handlers, server_error
from prism.serve.model import ServedModel
from prism.serve.payload import read_payload
from prism.serve.schemas import (
    CLASSES_OPENAPI,
    CLASSES_RESPONSES,
    PREDICT_OPENAPI,
    PREDICT_RESPONSES,
    BatchingStats,
    ErrorBody,
    Health,
    ModelInfo,
    ReloadResult,
    predict_openapi,
)
from prism.serve.settings import ServeSettings
from prism.tasks.outputs import encode_result

__all__ = ["DEPLOYMENT", "ModelServer", "api"]

DEPLOYMENT = "ModelServer"
"""The deployment's name in Serve configs (``deployments: - name: ModelServer``)."""

api = FastAPI(
    title="Prism model",
    description="A LoRA-adapted vision foundation model from the MLflow registry, for the task it was trained "
    "for (GET /models says which). Errors are JSON `{error, detail}`.",
    version="2",
)
install_error_handlers(api)
_served_options: list[type] = []  # the options model of the task this replica serves, once loaded


def _openapi() -> dict[str, Any]:
    """FastAPI's spec, with ``POST /predict`` documenting the served task's request options."""
    if api.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        spec = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
        if _served_options:
            body = predict_openapi(_served_options[-1])["requestBody"]
            spec["paths"]["/predict"]["post"]["requestBody"] = body
        api.openapi_schema = spec
    return api.openapi_schema


api.openapi = _openapi  # type: ignore[method-assign]


def _document_options(options: type) -> None:
    """Make ``GET /openapi.json`` document ``options`` (the served task's) from now on.

    A module function on purpose: Serve ships the deployment class to the replicas by value, with copies of
    the module globals its methods name, while ``_openapi`` (which the served app calls) is shipped by
    reference and reads this module's own globals; calling this function (also shipped by reference) is
    what reaches them.
    """
    if not _served_options or _served_options[-1] is not options:
        _served_options.append(options)
        api.openapi_schema = None  # regenerated for the served task on the next GET /openapi.json
# Parses `Authorization: Bearer <token>` for POST /reload (and documents it in OpenAPI); the check is
# ServedModel.authorize_reload, which also answers a missing header.
_bearer = HTTPBearer(auto_error=False, description="the token in the replicas' env var reload.token_env")


def _check_multipart_installed() -> None:
    try:
        import python_multipart  # noqa: F401  (Starlette parses multipart forms with it)
    except ImportError:
        raise RuntimeError(
            "python-multipart is not installed; multipart uploads to POST /predict need it "
            "(pip install python-multipart)"
        ) from None


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=32, health_check_period_s=10)
@serve.ingress(api)
class ModelServer(ServedModel):
    """Serves one registered model of any task; settings arrive through ``reconfigure`` (``ServeSettings``).

    Each replica reserves ``ray_actor_options.num_cpus`` (1 here, overridable in the Serve config), and Ray
    sets ``OMP_NUM_THREADS`` from it, so torch runs that many threads per replica: scale out with replicas
    or raise ``num_cpus``.
    """

    def __init__(self, tracking_uri: str, device: str | None = None):
        _check_multipart_installed()
        super().__init__(tracking_uri, device)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        await super().reconfigure(user_config)
        _document_options(self.loaded().predictor.task.options_class)

    @api.post("/predict", summary="predict on images", openapi_extra=PREDICT_OPENAPI, responses=PREDICT_RESPONSES)
    async def predict(self, request: Request) -> list[dict[str, Any]]:
        """Predict on one or several images; one result per image, in request order."""
        settings = self.settings
        self.loaded()
        payload = await read_payload(request, settings.max_images_per_request, settings.max_request_bytes)
        if "zero_shot" in payload.options or settings.options.get("zero_shot"):
            await self.sync_classes()  # classes added on any replica
        options = self.request_options(payload.options)
        items = await asyncio.to_thread(
            lambda: [self.prepare(data, name, options, settings.max_image_pixels)
                     for name, data in zip(payload.names, payload.images, strict=True)]
        )
        results = await self.predict_images(items)
        return [encode_result({"image": name, **r}) for name, r in zip(payload.names, results, strict=True)]

    @api.get("/healthz", response_model=Health, responses={503: {"model": ErrorBody}})
    async def healthz(self) -> Health:
        """Liveness and the served version; 503 until a model is loaded."""
        info = self.loaded().info
        return Health(status="ok", model=f"{info.name} v{info.version}" if info.name else info.resolved_uri)

    @api.get("/models", response_model=ModelInfo, responses={503: {"model": ErrorBody}})
    async def models(self) -> ModelInfo:
        """The model version this replica serves: name, version, alias, run id, ranking metric."""
        return self.loaded().info

    @api.get("/settings", response_model=ServeSettings)
    async def current_settings(self) -> ServeSettings:
        """The settings this replica applies (its ``user_config``): limits, batching, request defaults."""
        return self.settings

    @api.get("/stats", response_model=BatchingStats)
    async def stats(self) -> BatchingStats:
        """This replica's batches since it started: how many, how many images, how full (size histogram)."""
        return self.batching_stats()

    @api.post("/reload", response_model=ReloadResult,
              responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 502: {"model": ErrorBody}})
    async def reload_model(
        self, request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> ReloadResult:
        """Re-resolve ``model_uri`` (e.g. after ``champion`` moved) and swap in the new version on this replica.

        Off unless ``reload.enabled`` (403); with ``reload.token_env`` set, the request must carry
        ``Authorization: Bearer <token>`` (401 without, 403 with another). The old version answers every
        request until the new one is fully loaded; if loading fails it keeps serving and the answer is 502
        ``reload_failed`` (the error is in the replica's log, under the request id).
        """
        self.authorize_reload(None if credentials is None else credentials.credentials)
        previous = self.loaded().info
        try:
            swapped = await self.reload()
        except Exception as exc:
            raise server_error(
                request, exc, 502, "reload_failed",
                f"reload of {self.settings.model_uri} failed; still serving {previous.resolved_uri}",
            ) from None
        return ReloadResult(reloaded=swapped, previous=previous, current=self.loaded().info)

    @api.get("/classes", responses={503: {"model": ErrorBody}})
    async def get_classes(self) -> dict[str, Any]:
        """The served version's classes: trained, saved zero-shot, and those added while serving."""
        await self.sync_classes()
        return self.classes_info()

    @api.post("/classes", summary="add a class from example images", openapi_extra=CLASSES_OPENAPI,
              responses=CLASSES_RESPONSES)
    async def post_class(
        self, request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> dict[str, Any]:
        """Add (or replace) a class from a few example images, without retraining: a classifier ranks it
        by the prototype of the images' embeddings when a request sets ``zero_shot=true``. Every replica of
        the application serves it from the next request on. Classes added this way are not saved with the
        model; they last as long as the Ray cluster (see the task guide to save them with a model version).
        """
        self.authorize_classes(None if credentials is None else credentials.credentials)
        settings = self.settings
        payload = await read_payload(request, settings.max_images_per_request, settings.max_request_bytes)
        unknown = sorted(set(payload.options) - {"name"})
        if unknown:
            raise RequestError(400, "invalid_request", f"unknown fields {unknown}; send `name` and `images`")
        await self.sync_classes()
        return await self.add_class(payload.options.get("name"), list(zip(payload.names, payload.images,
                                                                          strict=True)))

    @api.delete("/classes/{name}", responses=CLASSES_RESPONSES)
    async def delete_class(
        self, name: str, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> dict[str, Any]:
        """Remove a class added with ``POST /classes`` (on every replica)."""
        self.authorize_classes(None if credentials is None else credentials.credentials)
        return await self.remove_class(name)

