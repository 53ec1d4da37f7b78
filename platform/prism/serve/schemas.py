"""The HTTP contract of a served model: request and response bodies, as FastAPI documents them.

``POST /predict`` takes either content type on one route (OpenAPI lists both under ``requestBody``):

- ``multipart/form-data``: one or several files (any field name, conventionally ``images``), plus the
  served task's request options as form fields (every task: ``tta``; a classifier also ``top_k``);
- ``application/json``: :func:`predict_json_model` of the task's options, images as base64 strings.

The request options come from the served task's options model (``Task.options_class``), so the OpenAPI
spec of a replica documents the options of the task it serves. The response is the JSON of
``prism predict``: one result per image, in request order, e.g. for the multi-head classifier::

    [{"image": "a.png",
      "presence": {"prediction": "circle_clear",
                   "probabilities": {"circle_clear": 0.91, "circle_resembles": 0.06, "no_circle": 0.03}},
      "closure": {"prediction": "closed", "probabilities": {"closed": 0.8, "almost_closed": 0.2}}}]
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, TypeAdapter, WithJsonSchema, create_model
from pydantic.fields import FieldInfo

from prism.serve.payload import MAX_OPTION_FIELDS
from prism.tasks.options import PredictOptions

__all__ = [
    "BASE64_IMAGE",
    "IMAGE_FILE",
    "BatchingStats",
    "ErrorBody",
    "Health",
    "ModelInfo",
    "PREDICT_OPENAPI",
    "PREDICT_RESPONSES",
    "ReloadResult",
    "predict_json_model",
    "predict_openapi",
]


BASE64_IMAGE: dict[str, Any] = {"type": "string", "format": "byte"}
"""An image file as base64 text in a JSON body (OpenAPI's ``format: byte``)."""
IMAGE_FILE: dict[str, Any] = {"type": "string", "format": "binary"}
"""An image file as a multipart part (OpenAPI's ``format: binary``)."""
WHITE_PIXEL_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR42mP4//8/AAX+Av4zEpUUAAAAAElFTkSuQmCC"
"""A 1x1 white PNG as base64: the documented example of ``images``, which the server accepts as it is."""


def predict_json_model(options_class: type[BaseModel]) -> type[BaseModel]:
    """The JSON body of ``POST /predict`` for a task: its options (``options_class``) + ``images`` + ``names``.

    Every option may also be ``null``, which the server reads as "not given" (the deployment's default).
    """
    nullable = {name: (field.annotation | None, field) for name, field in options_class.model_fields.items()}
    return create_model(
        "PredictJSON", __base__=options_class, **nullable,
        images=(list[Annotated[str, WithJsonSchema(BASE64_IMAGE)]],
                Field(min_length=1, description="image files as base64 (a data:image/...;base64, URL is accepted "
                      "too)", examples=[[WHITE_PIXEL_PNG]])),
        names=(list[str] | None, Field(None, description="a name per image for the results (default image_0, "
                                       "image_1, ...)")),
    )


class ErrorBody(BaseModel):
    """Every error: a short code and a message that names the problem (see ``prism.serve.errors``)."""

    error: str = Field(examples=["image_too_large"])
    detail: str = Field(examples=["bomb.png: 8000x8000 = 64000000 pixels is over max_image_pixels=16777216"])
    request_id: str | None = Field(
        None, description="5xx only: the id the replica's log files the error under (also X-Request-ID)"
    )


class ModelInfo(BaseModel):
    """The model version a replica serves (from ``prism.tracking.describe_model`` at load time)."""

    uri: str = Field(description="the configured URI, e.g. models:/circles@champion")
    resolved_uri: str = Field(description="what was loaded, e.g. models:/circles/3")
    name: str | None = None
    version: int | None = None
    alias: str | None = Field(None, description="the alias in `uri`, if it names one")
    aliases: list[str] = Field(default_factory=list, description="aliases the version held when loaded")
    run_id: str | None = None
    metric: str | None = None
    metric_value: float | None = None
    metric_mode: str | None = None
    backbone: str | None = None
    task: str
    img_size: int
    loaded_at: str = Field(description="ISO 8601, UTC")


class BatchingStats(BaseModel):
    """``GET /stats``: the batches this replica ran since it started, to see how full they get under load
    (and so whether ``max_batch_size`` / ``batch_wait_timeout_s`` fit the traffic)."""

    batches: int = Field(description="batches run, failed ones included")
    images: int = Field(description="images in those batches")
    mean_batch_size: float
    batch_sizes: dict[int, int] = Field(description="batch size → number of batches of that size",
                                        examples=[{1: 12, 4: 30, 8: 5}])


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    model: str = Field(examples=["circles v3"])


class ReloadResult(BaseModel):
    """``POST /reload``: whether a new version was loaded, and the versions before and after."""

    reloaded: bool
    previous: ModelInfo
    current: ModelInfo


def _form_property(field: FieldInfo) -> dict[str, Any]:
    """A multipart form field's schema from an options field (form values are strings; OpenAPI says the type),
    with the field's constraints (``ge``, ``min_length``, ...), which the server checks."""
    annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    schema = TypeAdapter(annotation).json_schema()
    schema = next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), schema)
    return {**schema, "description": field.description or ""}


def predict_openapi(options_class: type[BaseModel]) -> dict[str, Any]:
    """The ``requestBody`` of ``POST /predict`` for a task whose request options are ``options_class``.

    In a form, a list option is its field repeated, and a form holds at most ``MAX_OPTION_FIELDS`` text
    fields, so a list may have as many items as are left when every other option is given once.
    """
    options = {name: _form_property(f) for name, f in options_class.model_fields.items()}
    room = MAX_OPTION_FIELDS - (len(options) - 1)
    for prop in options.values():
        if prop.get("type") == "array":
            prop["maxItems"] = min(prop.get("maxItems", room), room)
    form = {"images": {"type": "array", "items": IMAGE_FILE, "minItems": 1, "description": "image files"}, **options}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["images"], "properties": form,
                                                   "additionalProperties": False}},
                "application/json": {"schema": predict_json_model(options_class).model_json_schema()},
            },
        }
    }


CLASSES_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["name", "images"],
                                               "additionalProperties": False, "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 200, "description": "the new class's name"},
                "images": {"type": "array", "items": IMAGE_FILE, "minItems": 1,
                           "description": "a few example images of the class (5 to 20 is typical)"}}}},
            "application/json": {"schema": {"type": "object", "required": ["name", "images"],
                                            "additionalProperties": False, "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 200},
                "images": {"type": "array", "items": BASE64_IMAGE, "minItems": 1, "description": "base64 images"}}}},
        },
    }
}
"""The documented body of ``POST /classes``: a name and example images."""

CLASSES_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the classes after the change: {model, task, classes, zero_shot, added: [{class, "
          "shots}], revision, can_add}"},
    400: {"model": ErrorBody, "description": "bad name, no images, undecodable image"},
    401: {"model": ErrorBody, "description": "a token is configured (classes.token_env) and none was sent"},
    403: {"model": ErrorBody, "description": "classes.enabled is false, or another token was sent"},
    404: {"model": ErrorBody, "description": "DELETE of a class that was not added"},
    409: {"model": ErrorBody, "description": "this model cannot add classes (its task, or text zero-shot classes)"},
    413: {"model": ErrorBody, "description": "body over max_request_bytes, image over max_image_pixels, too many images"},
}

PREDICT_OPENAPI = predict_openapi(PredictOptions)
"""The route's documented body before a model is loaded (options every task takes)."""

PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "one result per image, in request order: {\"image\": name, <the task's fields>}"},
    400: {"model": ErrorBody, "description": "empty body, undecodable image, invalid request"},
    413: {"model": ErrorBody,
          "description": "body over max_request_bytes, image over max_image_pixels, or too many images"},
    415: {"model": ErrorBody, "description": "content type other than multipart/form-data or application/json"},
    503: {"model": ErrorBody, "description": "no model loaded"},
}
