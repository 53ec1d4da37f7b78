"""Serve's HTTP proxy retries a request whose replica died under it; what no replica can answer is a 503.

A replica that dies (killed, out of memory, node lost) while it holds a request leaves Serve's proxy with an
``ActorDiedError`` after the request was accepted, which Serve answers with a bare ``500 Internal Server
Error``: to a client, a bug. Serve itself re-routes only requests that no replica had accepted yet. This
middleware runs inside every Serve HTTP proxy, around Serve's own request handling, and closes that gap:

- it reads the request body first (up to ``max_body_bytes``; a larger body passes through unretried);
- it hands the request to Serve; if Serve ends it without starting a response (what Serve's proxy does when
  the replica's call failed: a dead replica, never an answer of the application, whose errors are always
  JSON bodies with a status, see ``errors.py``), the same request is sent again after a short back-off,
  and Serve routes it to a live replica;
- after ``attempts`` such failures, or when the next back-off would pass ``budget_s``, it answers
  ``503 replica_unavailable`` with ``Retry-After``, which :mod:`prism.serve.client` and any HTTP client
  that honours ``Retry-After`` retry. A client that disconnected is never retried.

Every route of a Prism app is safe to send twice: predictions are pure, ``POST /reload`` and ``POST
/classes`` (add or replace) are idempotent.

Installed through Serve's proxy callback, an environment variable that Serve's proxies read when they start::

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=prism.serve.proxy_retry:proxy_middlewares

The Serve configs set it under ``controller_options.runtime_env.env_vars``: Serve's controller starts the
proxies, which inherit its environment (this only takes effect when Serve starts; ``serve shutdown`` first
to add it to a running Serve). Responses that passed through it carry the header ``x-prism-proxy-retry``
(``0`` = answered at the first attempt, ``N`` = after N retries).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["CALLBACK_ENV", "CALLBACK_PATH", "RETRY_HEADER", "ReplicaLossRetry", "proxy_env", "proxy_middlewares"]

log = logging.getLogger("ray.serve")

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK_PATH = "prism.serve.proxy_retry:proxy_middlewares"
RETRY_HEADER = "x-prism-proxy-retry"
ATTEMPTS_ENV = "PRISM_PROXY_RETRY_ATTEMPTS"
MAX_BODY_ENV = "PRISM_PROXY_RETRY_MAX_BODY_BYTES"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ReplicaLossRetry:
    """ASGI middleware: resend a request that Serve ended without a response; 503 when none can answer.

    Args:
        app: the wrapped ASGI app (Serve's proxy request handler).
        attempts: how many times a request is sent in all (>= 1).
        backoff_s: the wait before the n-th retry is ``backoff_s * 2**(n-1)`` (0.05, 0.1, 0.2, ... s).
        budget_s: no retry starts later than this after the first attempt started.
        max_body_bytes: bodies up to this size are kept for a retry; larger ones are streamed through once.
        retry_after_s: the ``Retry-After`` of the 503.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], attempts: int = 4,
                 backoff_s: float = 0.05, budget_s: float = 10.0, max_body_bytes: int = 64 * 2**20,
                 retry_after_s: int = 1):
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.app = app
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.budget_s = budget_s
        self.max_body_bytes = max_body_bytes
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nobody to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = bool(message.get("more_body", False))
            if more and size > self.max_body_bytes:  # too large to keep: one attempt, streamed through
                await self.app(scope, _replay(chunks, receive, more=True), send)
                return
        await self._with_retries(scope, b"".join(chunks), receive, send)

    async def _with_retries(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        client = _Client(receive)
        failure = "no response"
        for attempt in range(self.attempts):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1)
                if loop.time() + delay - start > self.budget_s:
                    break
                if await client.left_within(delay):  # the back-off doubles as a wait for a disconnect
                    return
            answer = _Answer(send, attempt)
            try:
                await self.app(dict(scope), client.receiver(body), answer.send)
            except Exception as exc:  # Serve's handler raised: same as no response, unless one started
                if answer.started:
                    raise
                failure = f"{type(exc).__name__}: {exc}"
            else:
                failure = "no response"
            if answer.started or client.gone:
                return
            log.warning("%s %s: attempt %d of %d ended without a response (%s); %s",
                        scope.get("method"), scope.get("path"), attempt + 1, self.attempts, failure,
                        "retrying" if attempt + 1 < self.attempts else "giving up")
        await self._unavailable(send, failure)

    async def _unavailable(self, send: Send, failure: str) -> None:
        rid = uuid.uuid4().hex
        log.error("answering 503 replica_unavailable (request id %s) after: %s", rid, failure)
        body = json.dumps({
            "error": "replica_unavailable",
            "detail": f"no replica could answer after {self.attempts} attempts (replicas restarting or "
                      f"overloaded); retry after {self.retry_after_s} s. Request id {rid}",
            "request_id": rid,
        }).encode()
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(self.retry_after_s).encode()), (RETRY_HEADER.encode(), str(self.attempts).encode()),
        ]})
        await send({"type": "http.response.body", "body": body, "more_body": False})


class _Client:
    """The client side of one request across attempts: its body, replayed to each attempt, then the real
    ``receive`` (which only ever brings the client's disconnect), remembered once seen."""

    def __init__(self, receive: Receive):
        self._receive = receive
        self.gone = False

    async def left_within(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the client's disconnect; whether it left (now or before)."""
        if self.gone:
            return True
        try:
            message = await asyncio.wait_for(self._receive(), timeout)
        except TimeoutError:
            return False
        self.gone = message["type"] == "http.disconnect"
        return self.gone

    def receiver(self, body: bytes) -> Receive:
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone = True
            return message

        return receive


class _Answer:
    """Forwards one attempt's response messages, adding :data:`RETRY_HEADER`; ``started`` once it began."""

    def __init__(self, send: Send, attempt: int):
        self._send = send
        self._attempt = attempt
        self.started = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            headers = list(message.get("headers") or [])
            headers.append((RETRY_HEADER.encode(), str(self._attempt).encode()))
            message = {**message, "headers": headers}
        await self._send(message)


def _replay(chunks: list[bytes], receive: Receive, more: bool) -> Receive:
    """A ``receive`` that first gives the chunks already read, then the rest of the real stream."""
    pending = list(chunks)

    async def replayed() -> Message:
        if pending:
            body = pending.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(pending) or more}
        return await receive()

    return replayed


def proxy_middlewares() -> list[Any]:
    """Serve's proxy callback (:data:`CALLBACK_PATH`): the middlewares every Serve HTTP proxy applies.

    ``PRISM_PROXY_RETRY_ATTEMPTS`` (default 4) and ``PRISM_PROXY_RETRY_MAX_BODY_BYTES`` (default 64 MiB) in
    the proxies' environment tune it.
    """
    from starlette.middleware import Middleware

    return [Middleware(ReplicaLossRetry, attempts=int(os.environ.get(ATTEMPTS_ENV, "4")),
                       max_body_bytes=int(os.environ.get(MAX_BODY_ENV, str(64 * 2**20))))]


def proxy_env() -> dict[str, str]:
    """The environment that installs :class:`ReplicaLossRetry` in Serve's proxies (``controller_options``)."""
    return {CALLBACK_ENV: CALLBACK_PATH}
