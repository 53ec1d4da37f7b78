"""Drive ASGI apps and Starlette requests in-process, without a server or an HTTP client library.

:func:`call` sends one HTTP request through an ASGI app (a FastAPI app with its middleware and exception
handlers) and collects the response; :class:`Body` is a request body delivered in chunks that counts how
much of it was read, for :func:`request`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message

__all__ = ["Answer", "Body", "call", "request"]


@dataclass
class Body:
    """A request body sent as ``chunks`` (one ``http.request`` message each); ``sent`` counts those read."""

    chunks: list[bytes]
    sent: int = 0

    async def receive(self) -> Message:
        if self.sent >= len(self.chunks):
            return {"type": "http.disconnect"}
        self.sent += 1
        return {"type": "http.request", "body": self.chunks[self.sent - 1], "more_body": self.sent < len(self.chunks)}


def _scope(method: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
            "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
            "server": ("testserver", 80), "client": ("127.0.0.1", 12345),
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}


def request(body: Body, headers: dict[str, str] | None = None, method: str = "POST",
            path: str = "/predict") -> Request:
    """A Starlette request reading ``body``; ``headers`` as given (no Content-Length unless listed)."""
    return Request(_scope(method, path, headers or {}), body.receive)


@dataclass
class Answer:
    """What the app sent: status, headers (lower-case names), body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


def call(app: ASGIApp, method: str, path: str, *, headers: dict[str, str] | None = None,
         body: bytes = b"") -> Answer:
    """Send one request through ``app`` and return its answer.

    An exception the app re-raises after answering (Starlette's ``ServerErrorMiddleware`` does, so the
    server can log it) is swallowed once the response is complete; before that it propagates.
    """
    answer = Answer(0)
    done = False
    chunks = Body([body])

    async def send(message: Message) -> None:
        nonlocal done
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")
            done = not message.get("more_body", False)

    async def run() -> None:
        try:
            await app(_scope(method, path, headers or {}), chunks.receive, send)
        except Exception:
            if not done:
                raise

    asyncio.run(run())
    return answer
