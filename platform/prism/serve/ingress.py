"""How HTTP reaches the replicas: Serve's Python proxy (the default) or HAProxy in front of replicas that
answer HTTP themselves (Serve's direct ingress).

``proxy``: one Python proxy actor per node parses each request, routes it and forwards it to a replica
over a Ray actor call; :mod:`prism.serve.proxy_retry` resends requests whose replica died. On a 2-CPU
machine that path costs 9–14 ms per request and caps one-image requests at 120–190/s, whatever the model
(``bench/serve_throughput.py``).

``haproxy``: Ray Serve starts HAProxy (a C load balancer) on each node and every replica of the ingress
deployment serves HTTP on a port of its own (``RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT``, 30000 up);
HAProxy balances between them (least connections) and health-checks them. On the same machine, in the same
run: 2.9 ms of overhead per request instead of 14, 2.5x the one-image throughput. It needs the ``haproxy`` binary on every node
(Debian/Ubuntu: ``apt-get install haproxy``), and Ray Serve marks HAProxy support experimental. A request
whose replica dies before answering is resent by HAProxy (``retry-on`` below); POST /predict and POST
/classes may be replayed (a prediction has no side effect; re-adding a class replaces it).

The switch is a set of environment variables that every Serve process reads when it starts: the
controller (which starts HAProxy) and the replicas; :func:`with_ingress` puts them in a Serve config's
``controller_options`` and Prism deployments' ``ray_actor_options``. ``serve run`` / ``serve deploy`` of
such a config works the same (or ``ray start`` with them exported). HAProxy listens on
``http_options.host:port``; its admin socket and config live under ``/tmp/haproxy-serve`` (one Serve
instance per machine).
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Literal

from prism.config.schema import ConfigError

__all__ = ["INGRESS_KINDS", "Ingress", "haproxy_available", "haproxy_binary", "haproxy_env", "with_ingress"]

Ingress = Literal["proxy", "haproxy"]
INGRESS_KINDS: tuple[str, ...] = ("proxy", "haproxy")

HAPROXY_RETRY_ON = "conn-failure empty-response junk-response"
"""HAProxy resends a request whose connection failed, or whose replica closed it without (a valid) answer
(a replica killed mid-request); never after a response, so a deliberate 503 reaches the client."""


def haproxy_binary() -> str:
    """The ``haproxy`` executable: ``RAY_SERVE_HAPROXY_BINARY_PATH`` if set, else the first on ``PATH``.

    Raises:
        ConfigError: none found (with how to install it).
    """
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    found = explicit or shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None)
    if not found or not os.access(found, os.X_OK):
        raise ConfigError(
            "ingress 'haproxy' needs the haproxy binary on every node: `apt-get install haproxy` (Debian/Ubuntu) "
            "or set RAY_SERVE_HAPROXY_BINARY_PATH; or serve with the default ingress 'proxy'"
            + (f" (RAY_SERVE_HAPROXY_BINARY_PATH={explicit!r} is not an executable file)" if explicit else ""))
    return found


def haproxy_available() -> bool:
    """Whether :func:`haproxy_binary` finds an executable."""
    try:
        haproxy_binary()
    except ConfigError:
        return False
    return True


def haproxy_env(binary: str | None = None) -> dict[str, str]:
    """The environment that makes Serve start HAProxy and the replicas serve HTTP directly."""
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": binary or haproxy_binary(),
        "RAY_SERVE_HAPROXY_RETRY_ON": HAPROXY_RETRY_ON,
        "RAY_SERVE_HAPROXY_RETRIES": "3",
    }


def _with_env(options: dict[str, Any] | None, env: dict[str, str]) -> dict[str, Any]:
    """``options`` (a dict with an optional ``runtime_env``) with ``env`` added to its env vars; values the
    config already sets win."""
    options = dict(options or {})
    runtime_env = dict(options.get("runtime_env") or {})
    env_vars = {**env, **(runtime_env.get("env_vars") or {})}
    return {**options, "runtime_env": {**runtime_env, "env_vars": env_vars}}


def with_ingress(raw: dict[str, Any], ingress: Ingress, builder: str, deployment: str) -> dict[str, Any]:
    """A Serve config (the YAML's dict) set up for ``ingress``: for ``haproxy``, :func:`haproxy_env` in
    ``controller_options`` and in the ``ray_actor_options`` of every ``deployment`` of an application built
    by ``builder``. ``proxy`` returns ``raw`` unchanged.

    Raises:
        ConfigError: an unknown ingress, or no haproxy binary.
    """
    if ingress not in INGRESS_KINDS:
        raise ConfigError(f"unknown ingress {ingress!r}; choose one of {', '.join(INGRESS_KINDS)}")
    if ingress == "proxy":
        return raw
    env = haproxy_env()
    out = {**raw, "controller_options": _with_env(raw.get("controller_options"), env)}
    out["applications"] = [_with_replica_env(app, deployment, env) if app.get("import_path") == builder else app
                           for app in raw.get("applications") or []]
    return out


def _with_replica_env(app: dict[str, Any], deployment: str, env: dict[str, str]) -> dict[str, Any]:
    """``app`` with ``env`` in the ``ray_actor_options`` of its ``deployment`` (an entry added if it has none)."""
    deployments = list(app.get("deployments") or [])
    if not any(d.get("name") == deployment for d in deployments):
        deployments.append({"name": deployment})
    return {**app, "deployments": [{**d, "ray_actor_options": _with_env(d.get("ray_actor_options"), env)}
                                   if d.get("name") == deployment else d for d in deployments]}
