"""What a served model is configured with: the replica settings (Serve ``user_config``) and the app args.

Two objects, because Serve gives them different lifetimes:

- :class:`ServeSettings` is the deployment's ``user_config``. Serve hands it to ``reconfigure`` on every
  replica at start and again whenever it changes (``serve deploy`` with an edited config), without
  restarting the replica: the model URI, batching, input limits, request defaults and who may call
  ``POST /reload`` (:class:`ReloadSettings`) or may add classes (:class:`ClassesSettings`) live here.
- :class:`AppArgs` are the typed arguments of the app builder (``args:`` under the application in a Serve
  config). They are fixed for the life of the replicas: where the MLflow store is, which device, and the
  initial settings (a ``user_config`` in the Serve config file overrides them, as Serve always does).

Example (``serve_configs/circles.yaml``)::

    applications:
      - name: circles
        import_path: prism.serve.app:build_app
        args: {tracking_uri: null}
        deployments:
          - name: ModelServer
            user_config:
              model_uri: models:/circles@champion
              max_batch_size: 16
              reload: {enabled: true, token_env: PRISM_RELOAD_TOKEN}
"""

from __future__ import annotations

import os
import re
from typing import Any, ClassVar

from pydantic import Field, field_validator

from prism.config.schema import StrictModel

__all__ = [
    "MAX_REQUEST_BYTES",
    "AppArgs",
    "ClassesSettings",
    "ReloadSettings",
    "ServeSettings",
    "resolve_tracking_uri",
    "settings_dict",
]

MAX_REQUEST_BYTES = 32 * 2**20  # 32 MiB: 64 images of ~0.5 MB, base64 included
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ReloadSettings(StrictModel):
    """Who may call ``POST /reload`` (re-resolve ``model_uri`` and swap versions on one replica).

    Off by default: an endpoint that makes replicas load models is opt-in. A changed ``user_config``
    (``serve deploy``) re-resolves the alias on every replica whatever this says.
    """

    KEY: ClassVar[str] = "reload"
    ROUTES: ClassVar[str] = "POST /reload"

    enabled: bool = Field(
        False, description="serve POST /reload; false answers 403 reload_disabled"
    )
    token_env: str | None = Field(
        None,
        description="name of an environment variable of the replicas that holds the token POST /reload must "
        "send as `Authorization: Bearer <token>` (401 without it, 403 with another); null = no token, "
        "only for a private HTTP port. Read when the settings are applied: unset or empty refuses them",
    )

    @field_validator("token_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.fullmatch(v):
            raise ValueError(
                f"token_env must name an environment variable (letters, digits, _), got {v!r}; "
                "e.g. PRISM_RELOAD_TOKEN. The token itself never goes into the config"
            )
        return v

    def token(self) -> str | None:
        """The token POST /reload requires (read from ``token_env`` now), None when none is configured.

        Raises ``ValueError`` when ``token_env`` is set but the variable is unset or empty in this process.
        """
        if not self.enabled or self.token_env is None:
            return None
        value = os.environ.get(self.token_env, "")
        if not value.strip():
            raise ValueError(
                f"{self.KEY}.token_env is {self.token_env!r} but that environment variable is unset or empty on "
                "the replica; set it in the replicas' environment (runtime_env.env_vars, or the node's "
                "environment where Ray starts), or set reload.token_env: null"
            )
        return value


class ClassesSettings(ReloadSettings):
    """Who may add and remove classes while serving (``POST /classes``, ``DELETE /classes/{name}``: new
    classes from a few example images, shared by all replicas). Off by default, like reload: it changes
    what the endpoint answers. ``GET /classes`` is always served."""

    KEY: ClassVar[str] = "classes"
    ROUTES: ClassVar[str] = "POST /classes and DELETE /classes/{name}"

    enabled: bool = Field(
        False, description="serve POST /classes and DELETE /classes/{name}; false answers 403 classes_disabled"
    )
    token_env: str | None = Field(
        None,
        description="name of an environment variable of the replicas that holds the token POST /classes and "
        "DELETE /classes/{name} must send as `Authorization: Bearer <token>` (401 without it, 403 with "
        "another); null = no token, only for a private HTTP port",
    )


class ServeSettings(StrictModel):
    """Replica settings, the deployment's ``user_config`` (changes reach running replicas via ``reconfigure``)."""

    model_uri: str | None = Field(
        None,
        description="model to serve (required): models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or a "
        "bundle folder; an alias is resolved when (re)loading, so POST /reload follows a moved alias",
    )
    max_batch_size: int = Field(
        16, ge=1, description="most images per forward pass; images of concurrent requests share one"
    )
    batch_wait_timeout_s: float = Field(
        0.0, ge=0.0,
        description="how long an image may wait for others to fill its batch while the model is idle "
        "(seconds); images that queue while a batch runs always form the next batch, so 0 (never wait) "
        "still batches under load",
    )
    max_image_pixels: int = Field(
        4096 * 4096, ge=1,
        description="largest width x height accepted, read from the image header before decoding "
        "(decompression-bomb guard); larger images get 413",
    )
    max_images_per_request: int = Field(64, ge=1, description="more images in one request get 413")
    max_request_bytes: int = Field(
        MAX_REQUEST_BYTES, ge=1,
        description="largest request body in bytes (multipart or JSON; base64 adds a third); larger gets 413 "
        "body_too_large, from the Content-Length header before anything is read, or once that many bytes "
        "of a chunked body have arrived",
    )
    tta: bool = Field(True, description="test-time augmentation when a request does not say")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="default request options of the served task (e.g. {top_k: 3} for a classifier), checked "
        "against the task's options model when the model loads; a request's own options take precedence",
    )
    reload: ReloadSettings = Field(
        default_factory=ReloadSettings, description="who may call POST /reload (off by default)"
    )
    classes: ClassesSettings = Field(
        default_factory=ClassesSettings,
        description="who may add classes from example images while serving (POST /classes; off by default)",
    )

    @field_validator("model_uri")
    @classmethod
    def _non_empty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("model_uri is empty; give e.g. 'models:/NAME@champion' or a bundle folder")
        return None if v is None else v.strip()

    def require_model_uri(self) -> str:
        """``model_uri``, or ``ValueError`` saying where to set it."""
        if self.model_uri is None:
            raise ValueError("no model_uri: set user_config.model_uri in the Serve config (e.g. "
                             "models:/NAME@champion), or pass --model to prism serve")
        return self.model_uri


class AppArgs(StrictModel):
    """Arguments of :func:`prism.serve.app.build_app` (``args:`` of the application in a Serve config)."""

    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI the replicas read the registry from; null = env "
        "MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db where the app is built. Replicas run in other "
        "processes (other nodes on a cluster), so give an absolute sqlite path or a tracking server",
    )
    device: str | None = Field(None, description="cpu, cuda, cuda:1 ...; null = cuda if the replica has one")
    settings: ServeSettings = Field(
        default_factory=ServeSettings,
        description="initial replica settings; a user_config in the Serve config file takes precedence",
    )


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """The tracking URI replicas get: as given, else env, else the embedded store; sqlite paths made absolute.

    Resolved where the app is built and passed to the replicas explicitly, so a replica in another
    process or working directory still opens the same store.
    """
    from prism.tracking.store import ENV_TRACKING_URI, default_tracking_uri, sqlite_path

    uri = tracking_uri or os.environ.get(ENV_TRACKING_URI) or default_tracking_uri()
    db = sqlite_path(uri)
    return uri if db is None else f"sqlite:///{db}"


def settings_dict(settings: ServeSettings | dict[str, Any] | None) -> dict[str, Any]:
    """A validated ``user_config`` dict (what Serve stores and hands to ``reconfigure``)."""
    return ServeSettings.model_validate(settings or {}).model_dump(mode="json")
