"""``data.source: webdataset``: tar shards streamed by ``ray.data.read_webdataset``, decoded in Ray Data.

Nothing lists or decodes the samples up front: the driver expands the shard patterns (brace patterns such
as ``train-{000000..000127}.tar``, local paths or URIs that pyarrow opens: ``s3://``, ``gs://``) into shard
names, checks that each shard exists and is not empty (one small read each), and hands the list to Ray
Data, whose read tasks stream each tar. Decoding, label lookup and augmentation run in ``map_batches``
tasks, so memory stays bounded whatever the number of shards.

A sample is ``<key>.<image ext>`` plus its label member (``cls``: class index, ``txt``: class name). A
sample whose image does not decode, whose label is missing or not a class, or which has no image, stops the
job with a message naming its shard and key; with ``data.on_bad_rows: skip`` it is dropped, and every
dropped sample (shard, key, reason) is recorded in a small actor that the driver reads after training
(``data/skipped_samples`` in MLflow). Empty shards are refused or, with ``skip``, left out before reading.

Without ``data.webdataset.val`` the validation set is the samples whose ``crc32(shard name / key)`` falls
in the first ``data.val_fraction`` of its range: the same split on every run, worker and epoch.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from prism.data.images import DecodeImages, decode_image
from prism.data.table import BadRowsError
from prism.data.uris import open_filesystem

if TYPE_CHECKING:
    from prism.config import JobConfig
    from prism.tasks.base import Task

__all__ = ["DecodeShardSamples", "ShardCheck", "build_webdataset", "check_shards", "expand_shards",
           "in_val_split"]

log = logging.getLogger(__name__)
TAR_BLOCK = 512
MAX_LISTED = 10
KEEP = "_keep"
"""Column :class:`DecodeShardSamples` marks the rows to keep with (other split, bad sample: False)."""


def expand_shards(patterns: list[str]) -> list[str]:
    """Each pattern's brace expansion (``a-{000..003}.tar`` → 4 names), in order, duplicates dropped."""
    from braceexpand import braceexpand

    return list(dict.fromkeys(name for pattern in patterns for name in braceexpand(pattern)))


@dataclass
class ShardCheck:
    """Shards that can be read, and those left out (``shard``, ``reason``)."""

    shards: list[str]
    skipped: pd.DataFrame


def check_shards(shards: list[str], on_bad_rows: str = "error") -> ShardCheck:
    """Each shard exists and holds at least one member: its size, and its first 512-byte tar header is not
    the end-of-archive zero block. Missing shards always raise; empty ones raise or, with ``skip``, are left
    out. Returns the readable shards as Ray Data reads them (local paths absolute)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=16) as pool:  # object stores: one round trip or two per shard
        states = list(pool.map(_shard_state, shards))
    missing = [s for s, (state, _) in zip(shards, states, strict=True) if state == "missing"]
    empty = [s for s, (state, _) in zip(shards, states, strict=True) if state == "empty"]
    kept = [path for state, path in states if state == "ok"]
    if missing:
        listed = "\n".join(f"  {s}" for s in missing[:MAX_LISTED])
        raise FileNotFoundError(f"{len(missing)} of {len(shards)} shard(s) not found:\n{listed}")
    if empty and on_bad_rows == "error":
        listed = "\n".join(f"  {s}: empty shard (no samples)" for s in empty[:MAX_LISTED])
        raise BadRowsError(f"{len(empty)} empty shard(s):\n{listed}\nRemove them, or set data.on_bad_rows=skip.")
    if empty:
        log.warning("left out %d empty shard(s): %s", len(empty), ", ".join(empty[:MAX_LISTED]))
    if not kept:
        raise BadRowsError(f"no readable shard among {len(shards)}")
    return ShardCheck(kept, pd.DataFrame({"shard": empty, "reason": ["empty shard"] * len(empty)}))


def _shard_state(shard: str) -> tuple[str, str]:
    """``("ok" | "missing" | "empty", the path Ray Data reads)`` of one shard."""
    import pyarrow.fs as pafs

    fs, inner = open_filesystem(shard)
    info = fs.get_file_info(inner)
    if info.type != pafs.FileType.File:
        return "missing", shard
    head = b""
    if info.size:
        with fs.open_input_stream(inner) as f:
            head = f.read(TAR_BLOCK)
    return ("ok" if head.strip(b"\0") else "empty"), (shard if "://" in shard else inner)


def in_val_split(shard: str, key: str, fraction: float) -> bool:
    """Whether sample ``key`` of ``shard`` is in the validation split (by ``crc32`` of the shard's file
    name and the key, so the same sample is chosen wherever the shards are)."""
    name = shard.rstrip("/").rsplit("/", 1)[-1]
    return zlib.crc32(f"{name}/{key}".encode()) % 100_000 < fraction * 100_000


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return (value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)).strip()


class DecodeShardSamples(DecodeImages):
    """``map_batches`` callable: read_webdataset rows (``__key__``, ``__url__``, image and label members as
    bytes) → ``{"image": uint8 (B, S, S, 3), "y_label": int64 (B,), "_keep": bool (B,)}``; the dataset
    then keeps the rows marked ``_keep`` (:func:`build_webdataset`).

    ``select``: ``all`` rows, or only the ``train`` / ``val`` side of :func:`in_val_split`. Bad samples
    raise :class:`~prism.data.table.BadRowsError` naming shard and key, or (``on_bad_rows="skip"``) are
    dropped and sent to ``ledger`` (an actor with ``add(rows)``) when one is given.
    """

    def __init__(self, size: int, classes: list[str], label: str = "cls", image_exts: tuple[str, ...] = ("jpg", "png"),
                 select: str = "all", val_fraction: float = 0.0, on_bad_rows: str = "error", ledger: Any = None,
                 **augment: Any):
        super().__init__(size, **augment)
        self.classes, self.index = list(classes), {c: i for i, c in enumerate(classes)}
        self.label, self.image_exts = label, tuple(image_exts)
        self.select, self.val_fraction = select, val_fraction
        self.on_bad_rows, self.ledger = on_bad_rows, ledger

    def _target(self, raw: Any) -> int:
        """The class index of a label member's bytes; ``ValueError`` saying what is wrong."""
        text = _text(raw)
        if not text:
            raise ValueError(f"no '{self.label}' member (the label)")
        if self.label == "cls":
            if not text.lstrip("-").isdigit() or not 0 <= int(text) < len(self.classes):
                raise ValueError(f"cls {text!r} is not a class index in 0..{len(self.classes) - 1}")
            return int(text)
        if text not in self.index:
            raise ValueError(f"label {text!r} is not one of the {len(self.classes)} classes")
        return self.index[text]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys, urls = batch["__key__"], batch["__url__"]
        n = len(keys)
        labels = batch.get(self.label, np.full(n, None, dtype=object))
        seeds = batch.get("aug_seed")
        images = np.zeros((n, self.size, self.size, 3), dtype=np.uint8)
        targets = np.full(n, -1, dtype=np.int64)
        keep = np.zeros(n, dtype=bool)
        bad = []
        for i in range(n):
            url, key = str(urls[i]), str(keys[i])
            if self.select != "all" and in_val_split(url, key, self.val_fraction) != (self.select == "val"):
                continue
            try:
                data = next((batch[e][i] for e in self.image_exts if e in batch and _present(batch[e][i])), None)
                if data is None:
                    raise ValueError(f"no image member ({', '.join(self.image_exts)})")
                targets[i] = self._target(labels[i])
                img = decode_image(bytes(data), f"{url}:{key}", min_side=self.draft_side)
                images[i] = self.transform(img, None if seeds is None else float(seeds[i]))
                keep[i] = True
            except ValueError as e:
                reason = str(e).replace(f"cannot decode image {url}:{key}: ", "undecodable image: ")
                bad.append({"shard": url, "key": key, "reason": reason})
        if bad and self.on_bad_rows == "error":
            listed = "\n".join(f"  {b['shard']}: sample {b['key']!r}: {b['reason']}" for b in bad[:MAX_LISTED])
            raise BadRowsError(f"{len(bad)} bad sample(s):\n{listed}\nFix the shards, or set "
                               "data.on_bad_rows=skip to drop such samples (they are counted and logged).")
        if bad and self.ledger is not None:  # recorded before the batch is handed on: no race with table()
            import ray

            ray.get(self.ledger.add.remote(bad))
        # every row comes out (an empty batch would lose the tensor type); KEEP marks those to keep
        return {"image": images, "y_label": targets, KEEP: keep}


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def _ledger():
    import ray

    @ray.remote(num_cpus=0)
    class SkipLedger:
        """The samples the decode tasks dropped, each once (epochs re-read the same shards)."""

        def __init__(self):
            self.rows: dict[tuple[str, str], str] = {}

        def add(self, rows: list[dict]) -> None:
            for r in rows:
                self.rows.setdefault((r["shard"], r["key"]), r["reason"])

        def table(self) -> list[dict]:
            return [{"shard": s, "key": k, "reason": r} for (s, k), r in sorted(self.rows.items())]

    return SkipLedger.remote()


def _fingerprint(shards: list[str], rule: str) -> str:
    names = sorted(s.rstrip("/").rsplit("/", 1)[-1] for s in shards)
    return hashlib.sha256("\n".join([rule, *names]).encode()).hexdigest()


def build_webdataset(cfg: JobConfig, task: Task, img_size: int):
    """The lazy train/val Ray datasets of ``cfg.data.webdataset`` for a task with ``classes``."""
    import ray.data
    from ray.data import FileShuffleConfig
    from ray.data.expressions import col, random

    from prism.data.datasets import TrainData, configure_context
    from prism.runtime.ray_cluster import ensure_ray

    d, w = cfg.data, cfg.data.webdataset
    train_check = check_shards(expand_shards(w.train), d.on_bad_rows)
    val_check = check_shards(expand_shards(w.val), d.on_bad_rows) if w.val else None
    ensure_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = d.progress_bars
    ledger = _ledger() if d.on_bad_rows == "skip" else None
    a = d.augment
    common = {"classes": list(task.classes), "label": w.label, "image_exts": tuple(w.image), "ledger": ledger,
              "on_bad_rows": d.on_bad_rows, "val_fraction": d.val_fraction}
    members = [*w.image, w.label]

    def decode(shards: list[str], shuffle: bool, select: str, **kwargs: Any):
        ds = ray.data.read_webdataset(shards, decoder=None, suffixes=members,
                                      shuffle=FileShuffleConfig(seed=cfg.train.seed) if shuffle else None)
        if kwargs.get("train"):
            ds = ds.with_column("aug_seed", random(seed=cfg.train.seed, reseed_after_execution=True))
        fn = DecodeShardSamples(img_size, select=select, **common, **kwargs)
        return ds.map_batches(fn, batch_size=d.map_batch_size).filter(expr=col(KEEP)).drop_columns([KEEP])

    train = decode(train_check.shards, w.shuffle_shards, "all" if val_check else "train", train=True,
                   hflip=a.hflip, vflip=a.vflip, rot90=a.rot90, crop_scale=a.crop_scale,
                   crop_ratio=a.crop_ratio, brightness=a.brightness)
    val_shards = val_check.shards if val_check else train_check.shards
    val = decode(val_shards, False, "all" if val_check else "val")
    for ds in (train, val):
        configure_context(ds.context, d.deterministic)
    skipped = pd.concat([train_check.skipped, *([val_check.skipped] if val_check else [])], ignore_index=True)
    rule = "val shards" if val_check else f"crc32 < {d.val_fraction}"
    where = (f"{len(train_check.shards)} training shard(s) ({w.train[0]}{' …' if len(w.train) > 1 else ''})"
             + (f", {len(val_check.shards)} validation shard(s)" if val_check else
                f", validation = {d.val_fraction:.0%} of their samples"))
    return TrainData(train, val, None, None, skipped.rename(columns={"shard": "image"}), None,
                     _fingerprint(val_shards, rule), source=f"webdataset: {where}", ledger=ledger)
