"""Classes added while serving (``POST /classes``), shared by every replica of an application.

A replica embeds a new class's example images with its model (the task's ``class_from_examples``: for a
classifier, the prototype of the images) and puts the entry into the application's :class:`ClassStore`;
every replica reads the store before a request that asks for the added classes, so all replicas answer
alike however many there are and whichever one took the examples::

    POST /classes (name + images) ─ replica k: embed ─▶ ClassStore.put(model, name, entry)   revision r+1
    POST /predict zero_shot=true  ─ replica j: ClassStore.since(model, r_j) ─▶ task.set_added_classes

Entries are kept per served model version (``ModelInfo.resolved_uri``): embeddings of one version mean
nothing to another, so a replica that swaps versions starts from that version's own added classes.

On Ray the store is one named, detached actor per application (``prism-classes-<app>``, namespace
``prism``, no CPU reserved), created by the first replica that needs it: it outlives replica restarts,
autoscaling and ``serve deploy`` of a new config, and ends with the Ray cluster (``ray.kill`` it to drop the
added classes sooner). Without Ray (tests, one process) a :class:`LocalStore` holds the same.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MAX_ADDED_CLASSES", "MAX_NAME_CHARS", "ClassStore", "LocalStore", "RayStore", "Snapshot",
           "check_class_name", "ray_store"]

MAX_ADDED_CLASSES = 10_000
MAX_NAME_CHARS = 200
NAMESPACE = "prism"


def check_class_name(name: object) -> str:
    """The stripped class name, or ``ValueError`` (not text, empty, over :data:`MAX_NAME_CHARS`, control
    characters)."""
    if name is not None and not isinstance(name, str):
        raise ValueError(f"a class name must be text, got {type(name).__name__} {name!r:.80}; send one `name`")
    name = (name or "").strip()
    if not name or len(name) > MAX_NAME_CHARS or any(ord(ch) < 32 for ch in name):
        raise ValueError(f"a class name must be 1 to {MAX_NAME_CHARS} printable characters, got {name!r}")
    return name


@dataclass(frozen=True)
class Snapshot:
    """The added classes of one model version at ``revision``: ``{name: entry (D,) float32}`` and the number
    of example images of each."""

    revision: int
    entries: dict[str, np.ndarray]
    shots: dict[str, int]


class ClassStore:
    """Added classes per model version, with a revision that grows at every change (the Ray actor's body)."""

    def __init__(self) -> None:
        self._models: dict[str, Snapshot] = {}
        self._lock = threading.Lock()

    def since(self, model: str, revision: int) -> Snapshot | None:
        """The model's classes if they changed after ``revision`` (−1: always), else None (nothing to copy)."""
        snap = self._models.get(model, Snapshot(0, {}, {}))
        return snap if snap.revision != revision else None

    def put(self, model: str, name: str, entry: np.ndarray, shots: int) -> Snapshot:
        """Add (or replace) class ``name``; the new snapshot. ``ValueError`` past :data:`MAX_ADDED_CLASSES` or
        when ``entry``'s size differs from the other classes'."""
        name = check_class_name(name)
        entry = np.asarray(entry, dtype=np.float32).reshape(-1)
        with self._lock:
            snap = self._models.get(model, Snapshot(0, {}, {}))
            if name not in snap.entries and len(snap.entries) >= MAX_ADDED_CLASSES:
                raise ValueError(f"{MAX_ADDED_CLASSES} classes are added already; remove some first")
            sizes = {v.shape[0] for v in snap.entries.values()}
            if sizes and entry.shape[0] not in sizes:
                raise ValueError(f"entry of size {entry.shape[0]}, the other classes' are {sizes.pop()}")
            new = Snapshot(snap.revision + 1, {**snap.entries, name: entry}, {**snap.shots, name: int(shots)})
            self._models[model] = new
            return new

    def remove(self, model: str, name: str) -> Snapshot:
        """Drop class ``name``; ``KeyError`` naming the added classes when it is not one of them."""
        with self._lock:
            snap = self._models.get(model, Snapshot(0, {}, {}))
            if name not in snap.entries:
                raise KeyError(f"{name!r} is not an added class; added: {sorted(snap.entries)}")
            new = Snapshot(snap.revision + 1, {k: v for k, v in snap.entries.items() if k != name},
                           {k: v for k, v in snap.shots.items() if k != name})
            self._models[model] = new
            return new


class LocalStore:
    """A :class:`ClassStore` in this process behind the async interface replicas use."""

    def __init__(self, store: ClassStore | None = None) -> None:
        self.store = store or ClassStore()

    async def call(self, method: str, *args: Any) -> Any:
        return getattr(self.store, method)(*args)


class RayStore:
    """The application's :class:`ClassStore` actor behind the same interface (errors re-raised as theirs)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def call(self, method: str, *args: Any) -> Any:
        from ray.exceptions import RayTaskError

        try:
            return await getattr(self.handle, method).remote(*args)
        except RayTaskError as exc:  # the store's own ValueError / KeyError, not a wrapped traceback
            cause = exc.as_instanceof_cause()
            raise (cause.cause if getattr(cause, "cause", None) is not None else cause) from None


_ray_stores: dict[str, RayStore] = {}
_ray_lock = asyncio.Lock()


async def ray_store(app: str) -> RayStore:
    """The store actor of application ``app`` (created on first use; every replica gets the same one)."""
    async with _ray_lock:
        if app not in _ray_stores:
            import ray

            actor = ray.remote(ClassStore).options(
                name=f"prism-classes-{app}", namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                num_cpus=0, max_concurrency=1)
            _ray_stores[app] = RayStore(await asyncio.to_thread(actor.remote))
        return _ray_stores[app]
