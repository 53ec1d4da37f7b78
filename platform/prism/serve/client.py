"""Python client of a served Prism model (any task), retrying what a lost or restarting replica answers.

::

    from prism.serve.client import Client

    client = Client("http://127.0.0.1:8000")
    client.models()                                   # the served version
    client.predict(["a.png", "b.jpg"], tta=False)     # one result per image, in order
    client.predict([("img.png", png_bytes)], prompt="circle")   # a segmenter's option

Retries (urllib3's ``Retry``, on a ``requests`` session): connection failures, and the answers ``502``,
``503`` and ``504``, waiting the ``Retry-After`` the server sends (Serve's proxy answers ``503
replica_unavailable`` when no replica could take a request, a replica whose model broke ``503
model_unhealthy``) or an exponential back-off. Every route is safe to send twice (predictions are pure;
``/reload`` and ``/classes`` are idempotent), so ``POST`` is retried too. Other errors raise at once:
``ValueError`` for a 4xx (the request is wrong: the message is the server's ``{error, detail}``),
``RuntimeError`` for a 5xx.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

__all__ = ["RETRY_STATUSES", "Client", "check_response", "retrying_session"]

RETRY_STATUSES = (502, 503, 504)
ImageArg = str | Path | bytes | tuple[str, bytes]


def retrying_session(retries: int = 5, backoff_s: float = 0.25) -> requests.Session:
    """A ``requests.Session`` retrying connection errors and :data:`RETRY_STATUSES` up to ``retries`` times.

    Waits ``Retry-After`` when the answer has one, else ``backoff_s * 2**(n-1)`` before the n-th retry.
    """
    retry = Retry(total=retries, connect=retries, read=retries, status=retries, other=0,
                  status_forcelist=RETRY_STATUSES, allowed_methods=None, backoff_factor=backoff_s,
                  respect_retry_after_header=True, raise_on_status=False)
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def check_response(resp: requests.Response, what: str) -> Any:
    """The JSON of a successful response; the API's ``{error, detail}`` as ``ValueError`` (4xx) or
    ``RuntimeError`` (5xx, including a 503 that outlasted the retries)."""
    if resp.ok:
        return resp.json()
    try:
        body = resp.json()
        reason = f"{body['error']}: {body['detail']}"
    except (ValueError, KeyError, TypeError):
        reason = resp.text[:500]
    exc = ValueError if 400 <= resp.status_code < 500 else RuntimeError
    raise exc(f"{what} answered {resp.status_code} {reason}")


def _field(value: Any) -> str:
    """An option as a form field (a list is sent as the field repeated)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _file(image: ImageArg, index: int) -> tuple[str, bytes, str]:
    if isinstance(image, tuple):
        name, data = image
    elif isinstance(image, bytes):
        name, data = f"image_{index}", image
    else:
        path = Path(image)
        name, data = path.name, path.read_bytes()
    return name, data, mimetypes.guess_type(name)[0] or "application/octet-stream"


class Client:
    """The HTTP API of one served Prism app (``prism serve`` / ``serve run``) at ``endpoint``.

    Args:
        endpoint: base URL of the app, e.g. ``http://127.0.0.1:8000`` (its route prefix included).
        timeout_s: timeout of each HTTP attempt.
        retries: retries per call (connection errors, 502 / 503 / 504).
        backoff_s: first back-off when the server sends no ``Retry-After``.
        token: bearer token for ``/reload`` and ``/classes`` where the deployment requires one.
    """

    def __init__(self, endpoint: str, timeout_s: float = 120.0, retries: int = 5, backoff_s: float = 0.25,
                 token: str | None = None):
        self.base = endpoint.rstrip("/")
        self.timeout_s = timeout_s
        self.session = retrying_session(retries, backoff_s)
        self._auth = {} if token is None else {"Authorization": f"Bearer {token}"}

    def _get(self, route: str) -> Any:
        try:
            resp = self.session.get(f"{self.base}{route}", timeout=self.timeout_s)
        except requests.ConnectionError as exc:
            raise ConnectionError(f"cannot reach {self.base}: is it serving (`prism serve`)? ({exc})") from None
        return check_response(resp, f"GET {self.base}{route}")

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: ``{"status": "ok", "model": "NAME vN"}``."""
        return self._get("/healthz")

    def models(self) -> dict[str, Any]:
        """``GET /models``: the served version (name, version, alias, task, ...)."""
        return self._get("/models")

    def settings(self) -> dict[str, Any]:
        """``GET /settings``: the replicas' limits and request defaults (e.g. ``max_images_per_request``)."""
        return self._get("/settings")

    def predict(self, images: Sequence[ImageArg], **options: Any) -> list[dict[str, Any]]:
        """``POST /predict`` with ``images`` (paths, bytes, or ``(name, bytes)``) as multipart files and the
        task's request ``options`` (``tta``, ``top_k``, ``prompt``, ...) as form fields; one result per
        image, in order. At most ``settings()["max_images_per_request"]`` images per call."""
        files = [("images", _file(image, i)) for i, image in enumerate(images)]
        data = {k: [_field(x) for x in v] if isinstance(v, (list, tuple)) else _field(v) for k, v in options.items()}
        try:
            resp = self.session.post(f"{self.base}/predict", files=files, data=data, timeout=self.timeout_s)
        except requests.ConnectionError as exc:
            raise ConnectionError(f"cannot reach {self.base}: is it serving (`prism serve`)? ({exc})") from None
        return check_response(resp, f"POST {self.base}/predict")

    def reload(self) -> dict[str, Any]:
        """``POST /reload`` on one replica (after an alias moved)."""
        resp = self.session.post(f"{self.base}/reload", headers=self._auth, timeout=self.timeout_s)
        return check_response(resp, f"POST {self.base}/reload")
