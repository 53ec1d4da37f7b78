"""``POST /predict`` request → named image bytes + options, or a :class:`RequestError`.

Dispatches on the content type (``multipart/form-data`` or ``application/json``, else 415) and enforces
``max_request_bytes`` while the body is read (413 from ``Content-Length`` before reading; a chunked body
is cut off once it passes the limit) and ``max_images_per_request`` before any image is decoded. Parsing
is left to Starlette (multipart, through ``python-multipart``) and pydantic (JSON); this module only maps
their failures onto the API's errors.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.types import Message

from prism.serve.errors import RequestError
from prism.serve.images import decode_base64
from prism.serve.settings import MAX_REQUEST_BYTES

__all__ = ["JSONOptions", "Payload", "limit_body", "parse_options", "read_payload"]

MULTIPART = "multipart/form-data"
JSON = "application/json"
MAX_OPTION_FIELDS = 32


class _JSONBody(BaseModel):
    """``{"images": [...], "names": [...], <task options>}``; the options are checked by the served task."""

    model_config = ConfigDict(extra="allow")

    images: list[str]
    names: list[str] | None = None


class JSONOptions(dict):
    """Options from a JSON body: typed values, which must already have their option's type (``"tta": 0`` or
    ``"top_k": "3"`` are refused), where form fields are text that :func:`parse_options` converts."""


@dataclass(frozen=True)
class Payload:
    """What a predict request carries: ``names[i]`` names the image file ``images[i]``; ``options`` are the
    request's task options, raw (form strings, or JSON values as :class:`JSONOptions`), checked by
    :func:`parse_options`."""

    names: list[str]
    images: list[bytes]
    options: dict[str, Any]


def _too_large(what: str, limit: int) -> RequestError:
    return RequestError(
        413, "body_too_large",
        f"request body of {what} bytes, max_request_bytes={limit}; send fewer or smaller images per request",
    )


def limit_body(request: Request, max_bytes: int) -> Request:
    """``request`` whose body reads raise 413 ``body_too_large`` past ``max_bytes``.

    A ``Content-Length`` over the limit is refused before any byte is read; otherwise the bytes are
    counted as they arrive (chunked bodies, or a client that lies about the length), and reading stops
    at the first chunk that passes the limit.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(declared, max_bytes)
    received = 0
    receive = request.receive

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise _too_large(f"more than {max_bytes}", max_bytes)
        return message

    return Request(request.scope, counted)


def _too_many(n: int | str, limit: int) -> RequestError:
    return RequestError(
        413, "too_many_images",
        f"{n} images in one request, max_images_per_request={limit}; split them over several requests",
    )


def _integral(value: Any) -> Any:
    """``value`` with every integral float an int: JSON Schema's ``integer`` counts ``3.0`` and ``1e3`` in."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _types(schema: dict[str, Any]) -> set[str]:
    """The JSON types a property schema allows (through ``anyOf`` / ``oneOf`` and ``enum`` values)."""
    declared = schema.get("type", [])
    types = {declared} if isinstance(declared, str) else set(declared)
    types |= {{bool: "boolean", int: "integer", float: "number", str: "string"}.get(type(v), "other")
              for v in schema.get("enum", [])}
    for sub in (*schema.get("anyOf", []), *schema.get("oneOf", [])):
        types |= _types(sub)
    return types


@functools.lru_cache(maxsize=32)
def _field_types(options_class: type[BaseModel]) -> dict[str, frozenset[str]]:
    """JSON types of each option, and of the items of array options (key ``"<name>[]"``)."""
    out: dict[str, frozenset[str]] = {}
    for name, prop in options_class.model_json_schema().get("properties", {}).items():
        out[name] = frozenset(_types(prop))
        items = [s.get("items", {}) for s in (prop, *prop.get("anyOf", [])) if "items" in s]
        out[f"{name}[]"] = frozenset(t for item in items for t in _types(item))
    return out


def _form_value(text: str, types: frozenset[str]) -> Any:
    """A form field's text as the JSON value it spells, unless the option takes text (``true``, ``3``, ``0.5``,
    ``["a", "b"]``; ``True`` / ``FALSE`` too, as Python's ``str(bool)`` sends them); text that spells none
    stays text, for the option's own check to refuse or read (a classifier's comma-separated classes)."""
    if not types or "string" in types:
        return text
    if "boolean" in types and text.strip().lower() in ("true", "false"):
        return text.strip().lower() == "true"
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return text if value is None else value  # a form documents no null: `top_k=null` is refused


def _request_values(options_class: type[BaseModel], given: dict[str, Any]) -> dict[str, Any]:
    """Form fields (text, or lists of text for a repeated field) → JSON values, by each option's types."""
    types = _field_types(options_class)
    out: dict[str, Any] = {}
    for key, value in given.items():
        if isinstance(value, list):
            item_types = types.get(f"{key}[]", frozenset())
            out[key] = [_form_value(v, item_types) if isinstance(v, str) else v for v in value]
        elif isinstance(value, str):
            out[key] = _form_value(value, types.get(key, frozenset()))
        else:
            out[key] = value
    return out


def parse_options(options_class: type[BaseModel], defaults: dict[str, Any], raw: dict[str, Any]) -> BaseModel:
    """The request's options as the served task's ``options_class``: ``defaults`` (the deployment's),
    overridden by the request's ``raw`` values; a bad or unknown option is a 400 naming it and the options
    the task accepts.

    The request's values must have the JSON types the OpenAPI spec documents: those of a JSON body
    (:class:`JSONOptions`) as sent (``"tta": 0`` or ``"top_k": "3"`` are refused), form fields as the JSON
    their text spells (``tta=true``, ``top_k=3``; ``tta=0`` or ``tta=yes`` are refused), text options as
    text. ``null`` (a JSON body) means "not given".
    """
    given = {k: v for k, v in raw.items() if v is not None}
    try:
        typed = _integral(given if isinstance(raw, JSONOptions) else _request_values(options_class, given))
        options_class.model_validate_json(json.dumps(typed), strict=True)
        return options_class.model_validate({**defaults, **typed})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RequestError(400, "invalid_request", f"options: {problems} (this model accepts "
                           f"{sorted(options_class.model_fields)})") from None


def _text_fields(items: list[tuple[str, str]]) -> dict[str, str | list[str]]:
    """Form text fields → options; a repeated field is a list (``-F classes=cat -F classes=dog``)."""
    fields: dict[str, str | list[str]] = {}
    for key in dict.fromkeys(k for k, _ in items):
        values = [v for k, v in items if k == key]
        fields[key] = values[0] if len(values) == 1 else values
    return fields


async def _read_multipart(request: Request, limit: int) -> Payload:
    try:
        async with request.form(max_files=limit, max_fields=MAX_OPTION_FIELDS) as form:
            files = [(key, value) for key, value in form.multi_items() if isinstance(value, UploadFile)]
            fields = _text_fields([(key, value) for key, value in form.multi_items() if isinstance(value, str)])
            names = [f.filename or f"{key}_{i}" for i, (key, f) in enumerate(files)]
            images = [await f.read() for _, f in files]
    except (HTTPException, MultiPartException) as exc:
        message = str(getattr(exc, "detail", None) or getattr(exc, "message", exc))
        if message.startswith("Too many files"):
            raise _too_many(f"more than {limit}", limit) from None
        raise RequestError(400, "invalid_request", f"malformed multipart body: {message}") from None
    if not files:
        raise RequestError(400, "empty_body", "no image files in the multipart body; attach them as `images`")
    return Payload(names, images, fields)


async def _read_json(request: Request, limit: int) -> Payload:
    body = await request.body()
    if not body.strip():
        raise RequestError(400, "empty_body", 'empty JSON body; send {"images": [base64, ...]}')
    try:
        req = _JSONBody.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise RequestError(400, "invalid_request", f"JSON body: {problems}") from None
    if not req.images:
        raise RequestError(400, "empty_body", '"images" is empty; send at least one base64 image')
    if len(req.images) > limit:
        raise _too_many(len(req.images), limit)
    names = req.names or [f"image_{i}" for i in range(len(req.images))]
    if len(names) != len(req.images):
        raise RequestError(
            400, "invalid_request", f"{len(names)} names for {len(req.images)} images; give one name per image"
        )
    images = [decode_base64(text, name) for text, name in zip(req.images, names, strict=True)]
    return Payload(names, images, JSONOptions(req.model_extra or {}))


async def read_payload(request: Request, max_images: int, max_bytes: int = MAX_REQUEST_BYTES) -> Payload:
    """Parse a predict request: at most ``max_images`` images in at most ``max_bytes`` of body.

    Raises:
        RequestError: 400 (empty or malformed body, unknown field, bad base64), 413 (body over
            ``max_bytes``, too many images), 415 (any other content type).
    """
    request = limit_body(request, max_bytes)
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == MULTIPART:
        return await _read_multipart(request, max_images)
    if media == JSON or media.endswith("+json"):
        return await _read_json(request, max_images)
    if not content_type and not await request.body():
        raise RequestError(400, "empty_body", "empty request; send image files as multipart/form-data or JSON")
    raise RequestError(
        415, "unsupported_media",
        f"content type {content_type or '(none)'!r} is not accepted; send multipart/form-data (image files) "
        'or application/json ({"images": [base64, ...]})',
    )
