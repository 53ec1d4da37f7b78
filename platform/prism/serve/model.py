"""The served model of one replica: which version it holds, how it swaps versions, how it batches.

No HTTP here (see ``deployment.py``), so the logic runs and is tested without Serve.

Versions: the model is one immutable :class:`Loaded` (predictor + its :class:`ModelInfo`) in
``self._loaded``. A reload resolves the URI (an alias may have moved), builds the new predictor completely
in a worker thread and only then replaces that one reference; a batch reads the reference once when it
starts, so every image is answered by exactly one version and nothing fails while the version changes.
``reconfigure`` does everything that can fail first (validate the settings, read the reload token, load
the model) and then applies settings, batch limits, token and model together, so a bad ``user_config``
leaves the replica serving what it served, as it was configured.

Batching: the request handler decodes and preprocesses its images in a worker thread (:meth:`ServedModel.prepare`,
off the event loop and in parallel with a running forward pass: the task's ``preprocess``), then
:meth:`ServedModel.predict_images` queues each :class:`Item` on the replica's
:class:`~prism.serve.batching.Batcher`, so images of concurrent requests share forward passes. A batch is
stacked and run by ``predictor.predict_prepared`` on the replica's model thread (not asyncio's default pool, where it could queue
behind the decoding of large images), keeping the event loop free for other requests meanwhile.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prism.serve.batching import Batcher
from prism.serve.classes import LocalStore, RayStore, Snapshot, ray_store
from prism.serve.errors import RequestError
from prism.serve.health import ModelHealth, check_finite
from prism.serve.images import open_checked
from prism.serve.payload import parse_options
from prism.serve.schemas import BatchingStats, ModelInfo
from prism.serve.settings import ReloadSettings, ServeSettings

if TYPE_CHECKING:  # torch is imported by the replicas, not where the app is built
    from prism.inference.predictor import Predictor, Prepared

__all__ = ["Item", "Loaded", "ServedModel", "checked_batch", "load_version", "run_batch"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """A served model version: the predictor and what it is. Replaced as a whole, never mutated."""

    predictor: Predictor
    info: ModelInfo


def load_version(uri: str, device: str | None) -> Loaded:
    """Resolve ``uri`` to one registered version (an alias is read once, here) and load that version."""
    from prism.inference.predictor import load_predictor
    from prism.tracking import describe_model

    desc = describe_model(uri)
    pinned = uri if desc["name"] is None or desc["version"] is None else f"models:/{desc['name']}/{desc['version']}"
    predictor = load_predictor(pinned, device=device)
    body = uri.removeprefix("models:/")
    info = ModelInfo(
        uri=uri, resolved_uri=pinned, name=desc["name"], version=desc["version"],
        alias=body.rsplit("@", 1)[1] if uri.startswith("models:/") and "@" in body else None,
        aliases=desc["aliases"], run_id=desc["run_id"], metric=desc["metric"],
        metric_value=desc["metric_value"], metric_mode=desc["metric_mode"], backbone=desc["backbone"],
        task=predictor.task.name, img_size=predictor.img_size, loaded_at=datetime.now(UTC).isoformat(),
    )
    return Loaded(predictor, info)


@dataclass(frozen=True)
class Item:
    """One image queued for a batch: its file, what :meth:`Predictor.prepare` made of it (for the predictor
    ``prepared_by``), and the request's options (the served task's options model)."""

    data: bytes
    name: str
    prepared: Prepared
    prepared_by: int
    options: Any


def checked_batch(predictor: Predictor, items: list[Item]) -> list[dict[str, Any]]:
    """:func:`run_batch`, refusing results with a NaN or infinite number (:class:`~prism.serve.health.NonFiniteOutput`)."""
    results = run_batch(predictor, items)
    check_finite(results)
    return results


def run_batch(predictor: Predictor, items: list[Item]) -> list[dict[str, Any]]:
    """Queued images → one result each: one batch per TTA setting (what ``predictions`` depends on), each
    image postprocessed with its own request's options.

    An image prepared by another predictor (a version swapped in since it was queued) is prepared again
    from its file by this one.
    """
    prepared = [it.prepared if it.prepared_by == id(predictor) else predictor.prepare(it.data, it.name, it.options)
                for it in items]
    results: list[dict[str, Any]] = [{} for _ in items]
    for tta in sorted({bool(it.options.tta) for it in items}):
        idx = [i for i, it in enumerate(items) if bool(it.options.tta) == tta]
        preds = predictor.predict_prepared([prepared[i] for i in idx], [items[i].options for i in idx])
        for i, result in zip(idx, preds, strict=True):
            results[i] = result
    return results


class ServedModel:
    """One replica's model: settings from ``reconfigure`` (:class:`ServeSettings`), atomic reloads, batching."""

    def __init__(self, tracking_uri: str, device: str | None = None, class_store: LocalStore | RayStore | None = None):
        from prism.tracking import configure_tracking

        self._tracking_uri = configure_tracking(tracking_uri)
        self._device = device
        self._settings = ServeSettings()
        # the values of settings.reload.token_env and settings.classes.token_env, read at reconfigure
        self._tokens: dict[str, str | None] = {"reload": None, "classes": None}
        self._class_store = class_store  # None: the application's Ray actor, found on first use
        self._classes_synced: tuple[int, int, dict[str, int]] = (0, -1, {})  # (id(predictor), revision, shots)
        self._loaded: Loaded | None = None
        self.health: ModelHealth[Item] = ModelHealth()
        self._reload_lock = asyncio.Lock()
        self.batcher: Batcher[Item, dict[str, Any]] = Batcher(
            self._predict_batch, self._settings.max_batch_size, self._settings.batch_wait_timeout_s)
        # The model's own thread: a batch never queues behind image decoding in asyncio's default pool.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prism-model")

    @property
    def settings(self) -> ServeSettings:
        return self._settings

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Validate ``user_config`` (:class:`ServeSettings`), load what it needs, then apply all of it at once.

        The model is (re)loaded at start, when ``model_uri`` changes, or when its alias moved. Validation,
        the reload token (``reload.token_env``) and that load happen before anything changes; settings,
        batch limits, token and model are then swapped with no ``await`` in between. Raises
        (``ValidationError``, ``ValueError``, a load error) with the replica unchanged.
        """
        settings = ServeSettings.model_validate(user_config)
        uri = settings.require_model_uri()
        tokens = {"reload": settings.reload.token(), "classes": settings.classes.token()}
        async with self._reload_lock:
            force = self._loaded is None or uri != self._settings.model_uri
            new = await self._load_unless_current(uri, force)
            task = (new or self.loaded()).predictor.task
            try:  # the defaults must be options of the task served from now on
                task.parse_options({"tta": settings.tta, **settings.options})
            except ValueError as exc:
                raise ValueError(f"user_config options: {exc}") from None
            if new is not None:
                self._swap(new)
            self.batcher.configure(settings.max_batch_size, settings.batch_wait_timeout_s)
            self._tokens = tokens
            self._settings = settings

    async def check_health(self) -> None:
        """Serve's health check: unhealthy until a model is loaded, and when its model is broken (batches
        fail and a probe that worked before fails too; see :mod:`prism.serve.health`)."""
        loaded = self._loaded
        if loaded is None:
            raise RuntimeError("no model loaded")

        async def run(items: list[Item]) -> list[dict[str, Any]]:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._model_thread, run_batch, loaded.predictor, items)

        await self.health.check(run)

    def loaded(self) -> Loaded:
        """The served version; 503 ``model_not_loaded`` before the first load."""
        loaded = self._loaded
        if loaded is None:
            raise RequestError(503, "model_not_loaded", "the replica has no model loaded yet; retry shortly")
        return loaded

    async def reload(self, uri: str | None = None, force: bool = False) -> bool:
        """Load ``uri`` (default: the configured one) unless it still resolves to the served version.

        The new predictor is built completely before it replaces the old one in a single assignment.
        Returns whether a new version was swapped in; a failed load raises and leaves the old one serving.
        """
        async with self._reload_lock:
            new = await self._load_unless_current(uri or self._settings.require_model_uri(), force)
            if new is None:
                return False
            self._swap(new)
            return True

    async def _load_unless_current(self, uri: str, force: bool) -> Loaded | None:
        """The version ``uri`` resolves to, loaded in a worker thread; None if that is the one served (and not
        ``force``). Changes nothing: the caller swaps it in (holding ``_reload_lock``)."""
        from prism.tracking import describe_model

        current = self._loaded
        if not force and current is not None and current.info.version is not None and current.info.uri == uri:
            desc = await asyncio.to_thread(describe_model, uri)
            if (desc["name"], desc["version"]) == (current.info.name, current.info.version):
                return None
        return await asyncio.to_thread(load_version, uri, self._device)

    def _swap(self, new: Loaded) -> None:
        self._loaded = new  # the swap: one reference assignment
        self.health.reset()
        log.info("serving %s (%s)", new.info.resolved_uri, new.info.uri)

    def authorize_reload(self, token: str | None) -> None:
        """Whether ``POST /reload`` may run with this bearer ``token`` (None: no ``Authorization: Bearer``).

        Raises:
            RequestError: 403 ``reload_disabled`` (``reload.enabled`` false), 401 ``missing_token`` (a token
                is configured, none sent), 403 ``invalid_token`` (another token sent).
        """
        self._authorize(self._settings.reload, token,
                        "`serve deploy` with a changed user_config re-resolves model_uri on every replica")

    def authorize_classes(self, token: str | None) -> None:
        """Whether ``POST /classes`` / ``DELETE /classes/{name}`` may run with this bearer ``token``; as
        :meth:`authorize_reload` with ``classes.*`` (403 ``classes_disabled`` when off)."""
        self._authorize(self._settings.classes, token, "set user_config classes.enabled: true to add classes")

    def _authorize(self, access: ReloadSettings, token: str | None, hint: str) -> None:
        if not access.enabled:
            raise RequestError(
                403, f"{access.KEY}_disabled",
                f"{access.ROUTES} is disabled on this deployment (user_config {access.KEY}.enabled: false); {hint}",
            )
        expected = self._tokens.get(access.KEY)
        if expected is None:
            return
        if token is None:
            raise RequestError(
                401, "missing_token",
                f"{access.ROUTES} needs the header `Authorization: Bearer <token>`, the token being the value of "
                f"{access.token_env} on the replicas", headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(token.encode(), expected.encode()):
            raise RequestError(403, "invalid_token", f"the bearer token is not the one in {access.token_env}")

    def request_options(self, raw: dict[str, Any]) -> Any:
        """A request's raw options → the served task's options model, over the deployment's defaults
        (``tta`` and ``options`` of the settings), checked by the task against the served model; 400 naming
        a bad or unknown option."""
        task = self.loaded().predictor.task
        defaults = {"tta": self._settings.tta, **self._settings.options}
        options = parse_options(task.options_class, defaults, raw)
        try:  # the task's own checks against this model (e.g. class names need a CLIP backbone)
            return task.parse_options(options)
        except ValueError as exc:
            raise RequestError(400, "invalid_request", f"options: {exc}") from None

    def prepare(self, data: bytes, name: str, options: Any, max_pixels: int | None = None) -> Item:
        """One image file → a queued :class:`Item` (blocking: run it in a worker thread).

        The header check (``max_pixels``, default the settings' ``max_image_pixels``) and decoding of
        :func:`~prism.serve.images.open_checked` (4xx :class:`RequestError`), then ``predictor.prepare``:
        the inputs ``prism predict`` computes. Done per request, so a batch only stacks ready inputs.
        """
        image = open_checked(data, name, self._settings.max_image_pixels if max_pixels is None else max_pixels)
        predictor = self.loaded().predictor
        try:  # the task's checks of an image with its options (e.g. a segmenter's missing prompt): the caller's
            prepared = predictor.prepare(image, name, options)
        except ValueError as exc:
            raise RequestError(400, "invalid_request", f"{name}: {exc}") from None
        return Item(data, name, prepared, id(predictor), options)

    async def _predict_batch(self, items: list[Item]) -> list[dict[str, Any]]:
        """The batcher's function: images of any callers → one result each."""
        predictor = self.loaded().predictor  # one version for the whole batch
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._model_thread, checked_batch, predictor, items)
        except Exception as exc:
            self.health.failed(exc)
            raise
        self.health.succeeded(items)
        return results

    def batching_stats(self) -> BatchingStats:
        """The batcher's counts so far (``GET /stats``)."""
        stats = self.batcher.stats
        return BatchingStats(batches=stats.batches, images=stats.items, mean_batch_size=stats.mean_size,
                             batch_sizes=dict(sorted(stats.sizes.items())))

    # -- classes added while serving ---------------------------------------------------------------
    async def _store(self) -> LocalStore | RayStore:
        if self._class_store is None:
            from ray import serve

            self._class_store = await ray_store(serve.get_replica_context().app_name)
        return self._class_store

    def _can_add(self, predictor: Predictor) -> None:
        reason = predictor.task.add_classes_error()
        if reason is not None:
            raise RequestError(409, "classes_unsupported", reason)

    def _apply(self, predictor: Predictor, snap: Snapshot | None) -> None:
        """Make ``predictor`` rank the store's snapshot (None: it is current already)."""
        if snap is None:
            return
        synced_for, revision, _ = self._classes_synced
        if synced_for == id(predictor) and snap.revision <= revision:
            return  # an answer that crossed a newer one
        predictor.task.set_added_classes(snap.entries)
        self._classes_synced = (id(predictor), snap.revision, dict(snap.shots))

    async def sync_classes(self) -> None:
        """Copy the classes added on any replica for the served version (one call to the store, which
        answers nothing when this replica is current). A task that cannot add classes has nothing to copy."""
        loaded = self.loaded()
        if loaded.predictor.task.add_classes_error() is not None:
            return
        known = self._classes_synced[1] if self._classes_synced[0] == id(loaded.predictor) else -1
        store = await self._store()
        self._apply(loaded.predictor, await store.call("since", loaded.info.resolved_uri, known))

    async def add_class(self, name: str | None, files: list[tuple[str, bytes]]) -> dict[str, Any]:
        """A new class from example images (decoded and checked as predict's are): the task's entry of their
        predictions (a classifier: their prototype) goes into the application's store, for every replica.

        Raises:
            RequestError: 400 (bad name, no images, undecodable image), 409 (the model cannot add classes),
                413 (an image over ``max_image_pixels``).
        """
        from prism.serve.classes import check_class_name

        loaded = self.loaded()
        self._can_add(loaded.predictor)
        try:
            name = check_class_name(name)
        except ValueError as exc:
            raise RequestError(400, "invalid_request", str(exc)) from None
        if not files:
            raise RequestError(400, "empty_body", "no example images; attach a few images of the class as `images`")
        options = self.request_options({})
        items = await asyncio.to_thread(lambda: [self.prepare(data, fname, options) for fname, data in files])
        predictor = loaded.predictor

        def entry() -> Any:
            preds = predictor.raw_predictions([it.prepared for it in items], tta=bool(options.tta))
            return predictor.task.class_from_examples(preds)

        vector = await asyncio.get_running_loop().run_in_executor(self._model_thread, entry)
        store = await self._store()
        try:
            snap = await store.call("put", loaded.info.resolved_uri, name, vector, len(files))
        except ValueError as exc:
            raise RequestError(400, "invalid_request", str(exc)) from None
        self._apply(predictor, snap)
        return self.classes_info() | {"added_class": name, "shots": len(files)}

    async def remove_class(self, name: str) -> dict[str, Any]:
        """Drop an added class on every replica; 404 when ``name`` is not an added class."""
        loaded = self.loaded()
        self._can_add(loaded.predictor)
        store = await self._store()
        try:
            snap = await store.call("remove", loaded.info.resolved_uri, name)
        except KeyError as exc:
            raise RequestError(404, "unknown_class", str(exc.args[0])) from None
        self._apply(loaded.predictor, snap)
        return self.classes_info() | {"removed_class": name}

    def classes_info(self) -> dict[str, Any]:
        """``GET /classes``: the served version's classes (its label maps: trained, saved zero-shot) and those
        added while serving, with their example counts, as this replica last read them."""
        loaded = self.loaded()
        task = loaded.predictor.task
        known, shots = self._classes_synced[1], self._classes_synced[2]
        current = self._classes_synced[0] == id(loaded.predictor)
        return {"model": loaded.info.resolved_uri, "task": task.name, **task.label_maps(),
                "added": [{"class": c, "shots": n} for c, n in shots.items()] if current else [],
                "revision": max(known, 0) if current else 0,
                "can_add": task.add_classes_error() is None}

    async def predict_images(self, items: list[Item]) -> list[dict[str, Any]]:
        """Prepared images (:meth:`prepare`) → results (without names), in order; batched with other callers' images.

        503 ``model_unhealthy`` once the health check found the model broken (Serve replaces the replica;
        another one can answer the retry)."""
        if self.health.unhealthy is not None:
            raise RequestError(503, "model_unhealthy", "this replica's model is failing (the replica log says why) "
                               "and is being replaced: retry", headers={"Retry-After": "1"})
        return await self.batcher.submit_many(items)
