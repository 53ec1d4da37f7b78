"""Build the Serve application and run it locally: ``build_app`` (the typed builder) and ``run_local``.

``serve_configs/circles.yaml`` names ``prism.serve.app:build_app`` as its ``import_path``; Serve validates
the application's ``args`` into :class:`AppArgs` (from the annotation, so this module keeps real
annotations: no ``from __future__ import annotations``). The same config runs three ways::

    serve run serve_configs/circles.yaml        # Serve's CLI, local Ray
    serve deploy serve_configs/circles.yaml     # to a running cluster (ray start --head)
    prism serve serve_configs/circles.yaml      # run_local: overrides for model/port, then blocks
"""

import logging
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from ray import serve
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from prism.config.schema import ConfigError
from prism.serve.deployment import DEPLOYMENT, ModelServer
from prism.serve.ingress import Ingress, with_ingress
from prism.serve.proxy_retry import CALLBACK_ENV, RETRY_HEADER, proxy_env
from prism.serve.settings import AppArgs, ServeSettings, resolve_tracking_uri, settings_dict

__all__ = ["BUILDER", "build_app", "load_serve_config", "run_local"]

log = logging.getLogger(__name__)

BUILDER = "prism.serve.app:build_app"


def build_app(args: AppArgs) -> Application:
    """The model application: ``ModelServer`` with ``args.settings`` as its initial ``user_config``.

    The tracking URI is resolved here (argument, env ``MLFLOW_TRACKING_URI``, embedded default; sqlite
    paths made absolute) and handed to every replica, which may run in another process or node.
    """
    return ModelServer.options(user_config=settings_dict(args.settings)).bind(
        tracking_uri=resolve_tracking_uri(args.tracking_uri), device=args.device
    )


def _prism_apps(raw: dict[str, Any]) -> list[dict[str, Any]]:
    apps = [a for a in raw.get("applications") or [] if a.get("import_path") == BUILDER]
    if not apps:
        raise ConfigError(f"no application with import_path {BUILDER!r} in the Serve config")
    return apps


def load_serve_config(
    path: str | Path,
    *,
    model_uri: str | None = None,
    tracking_uri: str | None = None,
    host: str | None = None,
    port: int | None = None,
    ingress: Ingress = "proxy",
) -> ServeDeploySchema:
    """Read a Serve config, apply the overrides, validate it with Serve's own schema.

    ``model_uri`` goes into the ``user_config`` of each Prism app's ``ModelServer`` deployment,
    ``tracking_uri`` into its ``args`` (resolved to an absolute URI here, so replicas in other processes
    open the same store), ``host``/``port`` into ``http_options``, ``ingress="haproxy"`` into the
    controller's and the replicas' environment (:func:`prism.serve.ingress.with_ingress`). Invalid configs
    raise :class:`ConfigError` naming the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Serve config not found: {path} (see serve_configs/ for examples)")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with `applications:`, got {type(raw).__name__}")
    http = raw.setdefault("http_options", {}) or {}
    raw["http_options"] = http
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = int(port)
    for app in _prism_apps(raw):
        args = app.setdefault("args", {}) or {}
        app["args"] = args
        args["tracking_uri"] = resolve_tracking_uri(tracking_uri or args.get("tracking_uri"))
        if model_uri is not None:
            deployments = app.setdefault("deployments", []) or []
            app["deployments"] = deployments
            entry = next((d for d in deployments if d.get("name") == DEPLOYMENT), None)
            if entry is None:
                entry = {"name": DEPLOYMENT}
                deployments.append(entry)
            entry["user_config"] = {**(entry.get("user_config") or {}), "model_uri": model_uri}
    raw = with_ingress(raw, ingress, BUILDER, DEPLOYMENT)
    try:
        return ServeDeploySchema.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: not a valid Serve config:\n{exc}") from None


def _check_model(app: str, tracking_uri: str, model_uri: str) -> None:
    """Resolve ``model_uri`` before deploying.

    A typo then fails in seconds with the registered models or aliases listed, instead of after Serve has
    retried the replica constructor many times.
    """
    from prism.tracking import configure_tracking, describe_model

    configure_tracking(tracking_uri)
    try:
        describe_model(model_uri)
    except ValueError as exc:
        raise ConfigError(f"application {app!r} cannot serve {model_uri!r} from {tracking_uri}: {exc}") from None


def _served_models(schema: ServeDeploySchema) -> list[tuple[str, str, str]]:
    """``(app name, tracking URI, model URI)`` of each Prism app in ``schema``."""
    out = []
    for app in schema.applications:
        if app.import_path == BUILDER:
            args = AppArgs.model_validate(app.args)
            user_config = next((d.user_config for d in app.deployments if d.name == DEPLOYMENT), None) or {}
            try:  # a user_config the replicas' reconfigure would refuse fails here, not as a failed deploy
                if user_config:
                    ServeSettings.model_validate(user_config)
            except ValidationError as exc:
                raise ConfigError(f"application {app.name!r}: user_config of {DEPLOYMENT!r} is invalid: "
                                  f"{exc}") from None
            uri = user_config.get("model_uri") or args.settings.model_uri
            if not uri:
                raise ConfigError(f"application {app.name!r}: no model_uri; set user_config.model_uri of "
                                  f"{DEPLOYMENT!r} (e.g. models:/NAME@champion) or pass --model")
            out.append((app.name, resolve_tracking_uri(args.tracking_uri), uri))
    return out


def with_proxy_retry(options: Any) -> dict[str, Any]:
    """Serve's ``controller_options`` (a model, a dict or None) with :mod:`prism.serve.proxy_retry` installed in
    the proxies, unless the config names a proxy callback of its own."""
    raw = options.model_dump(exclude_none=True) if hasattr(options, "model_dump") else dict(options or {})
    runtime_env = dict(raw.get("runtime_env") or {})
    env_vars = dict(runtime_env.get("env_vars") or {})
    for key, value in proxy_env().items():
        env_vars.setdefault(key, value)
    return {**raw, "runtime_env": {**runtime_env, "env_vars": env_vars}}


def check_proxy_retry(url: str) -> bool:
    """Whether Serve's proxy at ``url`` retries requests of dead replicas (its answers carry
    :data:`RETRY_HEADER`); warns if not, e.g. when Serve was already running without it."""
    import requests

    try:
        headers = requests.get(f"{url}/healthz", timeout=30).headers
    except requests.RequestException as exc:
        log.warning("could not check Serve's proxy at %s: %s", url, exc)
        return False
    if RETRY_HEADER in headers:
        return True
    log.warning(
        "Serve's proxy at %s does not retry requests whose replica died (a replica lost under load answers "
        "500): Serve was started without %s=%s in its controller_options.runtime_env.env_vars. Run `serve "
        "shutdown` and deploy again to add it.", url, CALLBACK_ENV, proxy_env()[CALLBACK_ENV])
    return False


def _wait_running(names: list[str], timeout_s: float) -> None:
    """Poll ``serve.status()`` until every app runs; a failed deploy raises with Serve's message."""
    deadline = time.monotonic() + timeout_s
    while True:
        apps = serve.status().applications
        failed = {n: apps[n].message for n in names if n in apps and apps[n].status == "DEPLOY_FAILED"}
        if failed:
            raise RuntimeError("Serve could not deploy " + "; ".join(f"{n}: {m}" for n, m in failed.items()))
        if all(n in apps and apps[n].status == "RUNNING" for n in names):
            return
        if time.monotonic() > deadline:
            states = {n: apps[n].status if n in apps else "MISSING" for n in names}
            raise TimeoutError(f"Serve apps not running after {timeout_s:.0f}s: {states}")
        time.sleep(0.5)


def run_local(
    config: str | Path | AppArgs,
    *,
    model_uri: str | None = None,
    tracking_uri: str | None = None,
    host: str | None = None,
    port: int | None = None,
    blocking: bool = True,
    timeout_s: float = 300.0,
    ingress: Ingress = "proxy",
) -> str:
    """Start the model app on Ray Serve (``RAY_ADDRESS`` or a local Ray) and block until interrupted.

    ``config`` is a Serve config file (deployed as ``serve run`` deploys it: Serve's controller builds the
    app from ``import_path`` and applies ``deployments:``), or :class:`AppArgs` for a one-replica app at
    ``/``. Keyword arguments override the config (see :func:`load_serve_config`); ``ingress="haproxy"``
    puts HAProxy in front of replicas that answer HTTP themselves (:mod:`prism.serve.ingress`; Serve must
    not be running yet with the other ingress). The model URI is resolved
    against the tracking store first (:class:`ConfigError` naming the registered models/aliases if it does
    not resolve). Returns the base URL when ``blocking=False``; on Ctrl-C Serve is shut down.
    """
    from ray.serve._private.api import serve_start  # what `serve run <config>` calls; no public twin

    from prism.runtime.ray_cluster import ensure_ray

    if isinstance(config, AppArgs):
        if ingress != "proxy":
            raise ConfigError(f"ingress {ingress!r} needs a Serve config file (e.g. serve_configs/circles.yaml)")
        updates: dict[str, Any] = {"tracking_uri": resolve_tracking_uri(tracking_uri or config.tracking_uri)}
        if model_uri is not None:
            updates["settings"] = config.settings.model_copy(update={"model_uri": model_uri})
        args = config.model_copy(update=updates)
        try:
            served = args.settings.require_model_uri()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        _check_model("prism", resolve_tracking_uri(args.tracking_uri), served)
        ensure_ray()
        serve.start(http_options={"host": host or "127.0.0.1", "port": port or 8000},
                    controller_options={"runtime_env": {"env_vars": proxy_env()}})
        serve.run(build_app(args), name="prism", route_prefix="/")
        url = f"http://{host or '127.0.0.1'}:{port or 8000}"
    else:
        schema = load_serve_config(config, model_uri=model_uri, tracking_uri=tracking_uri, host=host, port=port,
                                   ingress=ingress)
        for app_name, store, uri in _served_models(schema):
            _check_model(app_name, store, uri)
        ensure_ray()
        client = serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location,
                             controller_options=with_proxy_retry(schema.controller_options))
        client.deploy_apps(schema)
        names = [a.name for a in schema.applications]
        _wait_running(names, timeout_s)
        prefix = next((a.route_prefix for a in schema.applications if a.import_path == BUILDER), "/") or "/"
        url = f"http://{schema.http_options.host}:{schema.http_options.port}{prefix.rstrip('/')}"
    if ingress == "proxy":  # HAProxy resends requests of dead replicas itself (prism.serve.ingress)
        check_proxy_retry(url)
    print(f"[prism] serving at {url}  (API docs: {url}/docs)", flush=True)
    if not blocking:
        return url
    try:
        while True:
            time.sleep(10)
    except KeyboardInterrupt:
        print("[prism] shutting down Serve", flush=True)
        serve.shutdown()
    return url
