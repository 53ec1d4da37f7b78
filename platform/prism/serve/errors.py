"""HTTP errors of the Serve API: every failure is a JSON body ``{"error": code, "detail": message}``.

Bad input is answered with a 4xx and never reaches the model, so a replica outlives any request:

====================  ======  ==============================================================
error                 status  when
====================  ======  ==============================================================
empty_body            400     no body, no files, or ``images: []``
invalid_request       400     JSON that does not match the request schema, unknown form field
undecodable_image     400     bytes (or base64) that are no image PIL can read
unsupported_media     415     a content type other than multipart/form-data or application/json
image_too_large       413     width x height over ``max_image_pixels`` (read from the header)
too_many_images       413     more than ``max_images_per_request`` images
model_not_loaded      503     the replica has no model yet (or loading it failed)
reload_failed         502     ``POST /reload`` could not load the model; the old one keeps serving
not_found, ...        4xx     Starlette's own HTTP errors (unknown route, wrong method), code from the phrase
internal              500     anything else (a bug: the message says what broke)
====================  ======  ==============================================================
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

__all__ = ["RequestError", "install_error_handlers"]

log = logging.getLogger(__name__)


class RequestError(Exception):
    """An error answered to the client: ``status`` (4xx/5xx), a short ``error`` code and a ``detail``."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "detail": self.detail}, status_code=self.status)


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


async def _on_http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    try:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    except ValueError:
        code = f"http_{exc.status_code}"
    return JSONResponse({"error": code, "detail": str(exc.detail)}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path)
    body: dict[str, Any] = {"error": "internal", "detail": f"{type(exc).__name__}: {exc}"}
    return JSONResponse(body, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Answer :class:`RequestError`, schema violations, HTTP errors and unexpected exceptions with the JSON body."""
    app.add_exception_handler(RequestError, _on_request_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
