"""What a served model is configured with: the replica settings (Serve ``user_config``) and the app args.

Two objects, because Serve gives them different lifetimes:

- :class:`ServeSettings` is the deployment's ``user_config``. Serve hands it to ``reconfigure`` on every
  replica at start and again whenever it changes (``serve deploy`` with an edited config), without
  restarting the replica: the model URI, batching, input limits and request defaults live here.
- :class:`AppArgs` are the typed arguments of the app builder (``args:`` under the application in a Serve
  config). They are fixed for the life of the replicas: where the MLflow store is, which device, and the
  initial settings (a ``user_config`` in the Serve config file overrides them, as Serve always does).

Example (``serve_configs/circles.yaml``)::

    applications:
      - name: circles
        import_path: prism.serve.app:build_app
        args: {tracking_uri: null}
        deployments:
          - name: Classifier
            user_config: {model_uri: "models:/circles@champion", max_batch_size: 16}
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, field_validator

from prism._schema import StrictModel

__all__ = ["DEFAULT_MODEL_URI", "AppArgs", "ServeSettings", "resolve_tracking_uri", "settings_dict"]

DEFAULT_MODEL_URI = "models:/circles@champion"


class ServeSettings(StrictModel):
    """Replica settings, the deployment's ``user_config`` (changes reach running replicas via ``reconfigure``)."""

    model_uri: str = Field(
        DEFAULT_MODEL_URI,
        description="model to serve: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or a "
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
    tta: bool = Field(True, description="test-time augmentation when a request does not say")
    top_k: int | None = Field(
        None, ge=1, description="default limit on the classes listed per head; null lists every class"
    )

    @field_validator("model_uri")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("model_uri is empty; give e.g. 'models:/circles@champion' or a bundle folder")
        return v.strip()


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
