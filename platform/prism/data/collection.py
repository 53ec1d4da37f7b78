"""Unlabelled collections (``data.source: images | video``) as Ray datasets of resized frames, in order.

Every row, whatever the source::

    {"image": uint8 (S, S, 3), "path": str, "subject": str, "clip": str, "frame": int}

``images``: the files under ``data.root`` (recursively unless ``data.images.recursive`` is false) or the
ones ``data.images.list_file`` names, sorted; with ``layout: subject_clip_frame`` a file
``root/<subject>/<clip>/<frame>.jpg`` gives its subject and clip, and ``frame`` is its place in the clip.
``video``: each file decoded in frame order by ``ray.data.read_videos`` (decord), every
``frame_stride``-th frame or about ``fps`` frames a second; ``clip`` is the file, ``frame`` its index.
With neither ``data.root`` nor a list, the task's synthetic generator writes an image folder first.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import ray.data

    from prism.config import JobConfig

__all__ = ["Collection", "collection_chunks", "list_collection", "read_frames"]

log = logging.getLogger(__name__)
COLUMNS = ["path", "subject", "clip", "frame"]


@dataclass
class Collection:
    """What a collection holds: ``rows`` (images: one per file; video: one per file, ``frame`` = -1) and
    the source kind."""

    source: str
    rows: pd.DataFrame
    root: Path | None = None
    info: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        what = ", ".join(f"{v} {k}" for k, v in self.info.items())
        return f"{self.source} collection: {what}" + (f" under {self.root}" if self.root else "")


def _synthetic_root(cfg: JobConfig) -> Path:
    from prism.data.datasets import resolve_labels_csv

    return resolve_labels_csv(cfg).parent  # the generator's folder (made once)


def _image_files(root: Path, recursive: bool, extensions: list[str]) -> list[Path]:
    exts = {"." + e.lower().lstrip(".") for e in extensions}
    walk = root.rglob("*") if recursive else root.glob("*")
    return sorted(p for p in walk if p.is_file() and p.suffix.lower() in exts)


def _listed_files(list_file: Path, root: Path | None) -> list[Path]:
    if not list_file.is_file():
        raise ValueError(f"data.images.list_file not found: {list_file}")
    base = root if root is not None else list_file.parent
    names = [ln.strip() for ln in list_file.read_text().splitlines()]
    files = [Path(n) if Path(n).is_absolute() else base / n for n in names if n and not n.startswith("#")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"{list_file}: {len(missing)} listed image(s) not found, e.g. {missing[:3]}")
    return files


def list_collection(cfg: JobConfig) -> Collection:
    """The collection ``cfg.data`` names (``ValueError`` for an empty one or a missing folder or file)."""
    d = cfg.data
    root = None if d.root is None else Path(d.root).resolve()
    if root is not None and not root.is_dir():
        raise ValueError(f"data.root is not a folder: {root}")
    if d.source == "video":
        return _list_videos(cfg, root)
    im = d.images
    if im.list_file is not None:
        files = _listed_files(Path(im.list_file).resolve(), root)
    else:
        if root is None:
            root = _synthetic_root(cfg)
        files = _image_files(root, im.recursive, im.extensions)
    if not files:
        raise ValueError(f"no images ({', '.join(im.extensions)}) found "
                         + (f"in {im.list_file}" if im.list_file else f"under {root}"))
    rows = pd.DataFrame({"path": [str(f) for f in files], "subject": "", "clip": "", "frame": 0})
    info = {"images": len(rows)}
    if im.layout == "subject_clip_frame":
        if root is None:
            raise ValueError("data.images.layout subject_clip_frame needs data.root (the subjects' folder)")
        rel = [f.relative_to(root).parts if f.is_relative_to(root) else () for f in files]
        bad = [str(f) for f, r in zip(files, rel, strict=True) if len(r) < 3]
        if bad:
            raise ValueError(f"layout subject_clip_frame: {len(bad)} image(s) are not at "
                             f"<root>/<subject>/<clip>/<frame>, e.g. {bad[:3]}")
        rows["subject"] = [r[-3] for r in rel]
        rows["clip"] = [f"{r[-3]}/{r[-2]}" for r in rel]
        rows["frame"] = rows.groupby("clip").cumcount()
        info |= {"subjects": int(rows["subject"].nunique()), "clips": int(rows["clip"].nunique())}
    return Collection("images", rows, root, info)


def _list_videos(cfg: JobConfig, root: Path | None) -> Collection:
    v = cfg.data.video
    files: list[Path] = []
    if v.paths:
        for pattern in v.paths:
            p = Path(pattern)
            if not p.is_absolute() and root is not None:
                p = root / p
            hits = sorted(Path(h) for h in glob.glob(str(p), recursive=True))
            if not hits:
                raise ValueError(f"data.video.paths: nothing matches {p}")
            files.extend(hits)
    elif root is not None:
        files = _image_files(root, True, v.extensions)
    else:
        raise ValueError("data.source video: give data.video.paths or data.root (a folder of videos)")
    if not files:
        raise ValueError(f"no videos ({', '.join(v.extensions)}) under {root}")
    rows = pd.DataFrame({"path": [str(f) for f in files], "subject": "", "clip": [str(f) for f in files],
                         "frame": -1})
    return Collection("video", rows, root, {"videos": len(rows)})


def collection_chunks(collection: Collection, chunk_images: int) -> list[pd.DataFrame]:
    """The collection in chunks that are processed (and saved) one after another: ``chunk_images`` image
    rows each, or one video file each."""
    rows = collection.rows
    step = 1 if collection.source == "video" else max(1, chunk_images)
    return [rows.iloc[i:i + step].reset_index(drop=True) for i in range(0, len(rows), step)]


class _DecodeResize:
    """``map_batches``: ``path`` → ``image`` uint8 (B, S, S, 3) (the predictor's resize); a file that does
    not decode raises :class:`~prism.data.table.BadRowsError` naming it."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from prism.data.images import decode_image, read_bytes, resize_rgb
        from prism.data.table import BadRowsError

        images = np.empty((len(batch["path"]), self.size, self.size, 3), dtype=np.uint8)
        for i, p in enumerate(batch["path"]):
            try:
                images[i] = resize_rgb(decode_image(read_bytes(str(p)), str(p)), self.size)
            except Exception as e:  # noqa: BLE001 — named and re-raised as a data error
                raise BadRowsError(f"cannot decode image {p}: {e}") from None
        return {**batch, "image": images}


def _path_key(path: str) -> str:
    return str(Path(str(path).removeprefix("local://")).resolve())


class _VideoFrames:
    """``map_batches`` over ``read_videos`` rows: keep every ``stride``-th frame, name its clip, and give it
    its file's ``chunk`` (``chunks``: resolved path → chunk index; every file must be in it)."""

    def __init__(self, stride: int, chunks: dict[str, int] | None = None):
        self.stride = stride
        self.chunks = chunks

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep = np.asarray(batch["frame_index"]) % self.stride == 0
        paths = np.asarray(batch["path"])[keep]
        out = {"image": np.asarray(batch["frame"])[keep].astype(np.uint8), "path": paths,
               "subject": np.full(len(paths), "", dtype=object), "clip": paths,
               "frame": np.asarray(batch["frame_index"])[keep].astype(np.int64)}
        if self.chunks is not None:
            keys = [_path_key(p) for p in paths]
            unknown = sorted({k for k in keys if k not in self.chunks})
            if unknown:
                raise ValueError(f"read_videos returned frames of {unknown[:2]}, which no chunk holds")
            out["chunk"] = np.array([self.chunks[k] for k in keys], dtype=np.int64)
        return out


def read_frames(source: str, rows: pd.DataFrame, img_size: int, batch_size: int = 32,
                fps: float | None = None, stride: int = 1) -> ray.data.Dataset:
    """The frames of ``rows`` (a chunk of :func:`list_collection`) as a Ray dataset in order (see module)."""
    import ray.data

    from prism.data.datasets import configure_context, rows_dataset

    if source == "video":
        ds = ray.data.read_videos(list(rows["path"]), include_paths=True, fps=None if fps is None else
                                  max(1, round(fps)), resize=(img_size, img_size))
        chunks = ({_path_key(p): int(c) for p, c in zip(rows["path"], rows["chunk"], strict=True)}
                  if "chunk" in rows else None)
        ds = ds.map_batches(_VideoFrames(1 if fps is not None else stride, chunks), batch_size=batch_size)
    else:
        keep = [c for c in rows.columns if c in (*COLUMNS, "chunk")]
        ds = rows_dataset(rows[keep], batch_size).map_batches(_DecodeResize(img_size), batch_size=batch_size)
    configure_context(ds.context, deterministic=True)
    return ds
