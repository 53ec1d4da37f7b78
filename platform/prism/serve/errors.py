"""HTTP errors of the Serve API: every failure is a JSON body ``{"error": code, "detail": message}``.

Bad input is answered with a 4xx and never reaches the model, so a replica outlives any request:

====================  ======  ==============================================================
error                 status  when
====================  ======  ==============================================================
empty_body            400     no body, no files, or ``images: []``
invalid_request       400     JSON that does not match the request schema, unknown form field
undecodable_image     400     bytes (or base64) that are no image PIL can read
missing_token         401     ``POST /reload`` without ``Authorization: Bearer`` where a token is set
reload_disabled       403     ``POST /reload`` while ``reload.enabled`` is false
invalid_token         403     ``POST /reload`` with a bearer token that is not the configured one
unsupported_media     415     a content type other than multipart/form-data or application/json
body_too_large        413     a request body over ``max_request_bytes`` (Content-Length or bytes read)
image_too_large       413     width x height over ``max_image_pixels`` (read from the header)
too_many_images       413     more than ``max_images_per_request`` images
model_not_loaded      503     the replica has no model yet (or loading it failed)
reload_failed         502     ``POST /reload`` could not load the model; the old one keeps serving
not_found, ...        4xx     Starlette's own HTTP errors (unknown route, wrong method), code from the phrase;
                              a 405's ``Allow`` lists every method served at the path
internal              500     anything else (a bug)
====================  ======  ==============================================================

5xx answers carry no exception text (it may name files, hosts or credentials of the tracking store): the
exception is logged on the replica with the request's id, and the body says only what failed and that id,
also in its ``request_id`` field. The id is the request's ``x-request-id`` header, which Serve's proxy sets
on every request (and returns as the ``X-Request-ID`` response header), else a new one.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

__all__ = ["REQUEST_ID_HEADER", "RequestError", "allowed_methods", "install_error_handlers", "request_id",
           "server_error"]

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"


class RequestError(Exception):
    """An error answered to the client: ``status`` (4xx/5xx), a short ``error`` code and a ``detail``.

    ``extra`` adds fields to the JSON body (``request_id`` of a 5xx), ``headers`` HTTP headers
    (``WWW-Authenticate`` of a 401).
    """

    def __init__(self, status: int, error: str, detail: str, *, extra: Mapping[str, str] | None = None,
                 headers: Mapping[str, str] | None = None):
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "detail": self.detail, **self.extra}, status_code=self.status,
                            headers=self.headers or None)


def request_id(request: Request) -> str:
    """The request's ``x-request-id`` (set by Serve's proxy on every request), else a new random id."""
    return request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex


def server_error(request: Request, exc: BaseException, status: int, error: str, what: str) -> RequestError:
    """A 5xx for ``exc``: logged here with its traceback and the request id, answered without its text.

    ``what`` is a sentence for the client that names no internals, e.g. ``"reload of
    models:/circles@champion failed"``.
    """
    rid = request_id(request)
    log.error("%s %s: %s (request id %s)", request.method, request.url.path, what, rid, exc_info=exc)
    return RequestError(status, error, f"{what}; the server log has the details under request id {rid}",
                        extra={"request_id": rid})


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "request does not match the schema (see /docs)"


async def _on_request_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestError)
    return exc.response()


async def _on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return RequestError(400, "invalid_request", _validation_detail(exc)).response()


def _route_methods(routes: Iterable[Any], path: str) -> set[str]:
    """The methods of every route in ``routes`` (and the routers they include) whose path matches ``path``."""
    methods: set[str] = set()
    for route in routes:
        regex, allowed = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and allowed and regex.match(path):
            methods |= set(allowed)
        inner = getattr(route, "routes", None) or getattr(getattr(route, "original_router", None), "routes", None)
        if inner:
            methods |= _route_methods(inner, path)
    return methods


def allowed_methods(request: Request, said: str | None) -> str:
    """The ``Allow`` header of a 405: every method some route serves at the request's path.

    Starlette answers with the methods of the first route whose path matched, so ``GET /classes`` alone
    where ``POST /classes`` is a separate route; ``said`` is that answer, kept in the union.
    """
    methods = {m.strip().upper() for m in (said or "").split(",") if m.strip()}
    methods |= _route_methods(getattr(request.app, "routes", ()), request.url.path)
    return ", ".join(sorted(methods))


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    try:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    except ValueError:
        code = f"http_{exc.status_code}"
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request, headers.get("Allow") or headers.get("allow"))
        headers.pop("allow", None)
    return JSONResponse({"error": code, "detail": str(exc.detail)}, status_code=exc.status_code,
                        headers=headers or None)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    return server_error(request, exc, 500, "internal", "internal error").response()


def install_error_handlers(app: FastAPI) -> None:
    """Answer :class:`RequestError`, schema violations, HTTP errors and unexpected exceptions with the JSON body."""
    app.add_exception_handler(RequestError, _on_request_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
