"""Ray datasets for training: labels table → stratified split → lazily decoded, augmented image batches.

Everything heavy (reading, decoding, resizing, augmenting) runs in Ray Data ``map_batches`` on CPU, streamed
to the Train workers, which receive ``{"image": uint8 (B, S, S, 3), "y_<head>": int64 (B,)}`` batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from prism.data.images import AUG_SEED_COLUMN, DecodeImages, check_decodable
from prism.data.table import LabelTable, raise_or_skip, read_label_table

if TYPE_CHECKING:
    import ray.data

    from prism.config import JobConfig
    from prism.tasks.base import Task

__all__ = [
    "Split",
    "TrainData",
    "build_datasets",
    "resolve_image_root",
    "resolve_labels_csv",
    "rows_dataset",
    "split_fingerprint",
    "split_labels",
    "split_table",
]

log = logging.getLogger(__name__)

MAX_BLOCKS = 1000
"""Most blocks :func:`rows_dataset` makes: 64,000 rows at the default 64 rows per decode batch."""

FIRST_BLOCK_SPLIT = 4
"""The first map batch of a split is decoded as this many smaller tasks: the first training or validation
batch waits for a quarter of a map batch per CPU (measured: time to first batch 0.46 s → 0.19 s, 64 → 16
rows, bench/data_throughput.py)."""


@dataclass
class TrainData:
    """The datasets handed to the trainer and what was learnt while building them."""

    train: ray.data.Dataset
    val: ray.data.Dataset
    n_train: int | None
    """Rows of each split; None for streamed shards, which are not counted before training."""
    n_val: int | None
    skipped: pd.DataFrame
    """Rows (or shards) dropped before training, with columns ``image`` and ``reason`` at least."""
    labels_csv: Path | None
    val_fingerprint: str | None = None
    """:func:`split_fingerprint` of the val split: what ``register_bundle(val_fingerprint=...)`` records."""
    source: str | None = None
    """Where the data comes from, one line (default: the labels CSV)."""
    ledger: object | None = None
    """An actor recording samples dropped while streaming (``table()`` → rows of shard, key, reason)."""

    def describe(self) -> str:
        """``96 train / 24 val images from …/labels.csv`` or the streamed source's line."""
        if self.source is not None:
            return self.source
        return f"{self.n_train} train / {self.n_val} val images from {self.labels_csv}"

    def skipped_while_streaming(self) -> pd.DataFrame:
        """Samples the decode tasks dropped (``data.on_bad_rows: skip``), read from the ledger after training."""
        if self.ledger is None:
            return pd.DataFrame(columns=["shard", "key", "reason"])
        import ray

        return pd.DataFrame(ray.get(self.ledger.table.remote()), columns=["shard", "key", "reason"])


@dataclass
class Split:
    """The checked labels table of a job and its train/val split, before any Ray dataset is made.

    ``train`` and ``val`` have a column ``path`` (absolute) and one int64 column ``y_<head>`` per head
    (``-1`` = ignored), as :meth:`Task.encode_labels <prism.tasks.base.Task.encode_labels>` makes them.
    """

    labels_csv: Path
    table: LabelTable
    train: pd.DataFrame
    val: pd.DataFrame
    image_root: Path | None = None

    @property
    def val_fingerprint(self) -> str:
        """:func:`split_fingerprint` of ``val``, paths relative to the image root."""
        return split_fingerprint(self.val, self.image_root or self.labels_csv.parent)


def resolve_image_root(cfg: JobConfig) -> Path | None:
    """``data.root`` (absolute), the folder relative image paths of the labels CSV are under; None = CSV's."""
    return None if cfg.data.root is None else Path(cfg.data.root).resolve()


def resolve_labels_csv(cfg: JobConfig) -> Path:
    """The labels CSV of ``cfg.data``; with neither ``data.root`` nor ``data.labels`` the synthetic
    generator's output (made once)."""
    path = cfg.data.labels_path()
    if path is not None:
        return Path(path).resolve()
    from prism.data.synth import SYNTH_GENERATORS

    s = cfg.data.synthetic
    options = cfg.task.synthetic_options()
    tag = f"-{hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]}" if options else ""
    out = (Path(s.cache_dir) / f"{s.generator}-n{s.n}-s{s.size}-seed{s.seed}{tag}").resolve()
    if not (out / "labels.csv").is_file():
        log.info("no data.root: generating %d synthetic '%s' images in %s", s.n, s.generator, out)
        SYNTH_GENERATORS[s.generator](out, n=s.n, size=s.size, seed=s.seed, **options)
    return out / "labels.csv"


def _warn_if_node_local(folder: Path, key: str) -> None:
    """Warn when files generated on this node feed a cluster of several nodes (decode tasks run anywhere)."""
    from prism.runtime.ray_cluster import alive_nodes

    if alive_nodes() > 1:
        log.warning("%s was written on this node only, and %d nodes may run the decode tasks: put it on storage "
                    "every node mounts (%s=/mnt/shared/…, docs/cluster.md)", folder, alive_nodes(), key)


def split_table(rows: pd.DataFrame, stratify: np.ndarray, val_fraction: float, seed: int
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified train/val split (sklearn); falls back to a plain split when a class is too rare."""
    _, counts = np.unique(stratify, return_counts=True)
    strat = stratify if counts.min() >= 2 and len(rows) * val_fraction >= len(counts) else None
    if strat is None:
        log.warning("a class has too few rows to stratify the split; using a random split")
    train, val = train_test_split(rows, test_size=val_fraction, random_state=seed, stratify=strat)
    return train.reset_index(drop=True), val.reset_index(drop=True)


def split_fingerprint(rows: pd.DataFrame, image_root: Path | None = None) -> str:
    """sha256 (hex) of a split: its ``path`` and ``y_<head>`` columns, rows sorted, written as CSV.

    Paths under ``image_root`` (the folder the CSV's relative paths were resolved against) enter relative
    to it, so the same data set in another place — a second clone, Ray's copy of the working folder under
    ``ray job submit``, a cluster node — has the same fingerprint. The same labels, ``data.val_fraction``
    and ``data.split_seed`` give the same value on every run; other image names, other labels, another
    split or another set of heads give another. File contents are not hashed.
    """
    def rel(p: str) -> str:
        if image_root is None:
            return p
        try:
            return Path(p).relative_to(image_root).as_posix()
        except ValueError:  # an absolute path in the CSV, outside the root
            return p

    cols = ["path", *sorted(c for c in rows.columns if c.startswith("y_"))]
    canonical = rows[cols].assign(path=rows["path"].map(rel)).sort_values(cols).to_csv(index=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def split_labels(cfg: JobConfig, task: Task, use_ray: bool = True) -> Split:
    """Read and check the labels of ``cfg.data`` and split them, exactly as training does.

    Image paths resolve as :func:`read_label_table` says (``data.root``, else the CSV's folder). With
    ``data.check_images`` every image is decoded once (in Ray Data tasks, or here with ``use_ray=False``)
    so undecodable files stop the job or, with ``on_bad_rows: skip``, are dropped before the split.
    ``use_ray=False`` is how ``prism evaluate`` recovers the validation split of a model's training data.
    """
    d = cfg.data
    csv = resolve_labels_csv(cfg)
    table = read_label_table(csv, d.image_column, task.label_columns(), task.unknown_labels, d.on_bad_rows,
                             image_root=resolve_image_root(cfg))
    if d.check_images and d.labels_path() is not None:  # synthetic data is written by our own generator
        table = _check_images(table, d.on_bad_rows, str(csv), use_ray)
    if len(table.rows) < 2:
        raise ValueError(f"{csv}: fewer than 2 usable rows after dropping {len(table.skipped)} bad ones")
    targets = task.encode_labels(table.rows)
    rows = pd.concat([table.rows[["path"]], pd.DataFrame(targets)], axis=1)
    train, val = split_table(rows, task.stratify_key(table.rows), d.val_fraction, d.split_seed)
    return Split(csv, table, train, val, resolve_image_root(cfg))


def rows_dataset(df: pd.DataFrame, rows_per_block: int, max_blocks: int = MAX_BLOCKS,
                 first_block_split: int = 1) -> ray.data.Dataset:
    """``df`` as a Ray dataset of blocks of ``rows_per_block`` rows (one ``map_batches`` batch each).

    ``ray.data.from_pandas(df)`` alone makes ONE block, and a block is one task: the whole split would be
    decoded by a single task on a single core, and nothing would reach the consumer until all of it was.
    One block per map batch lets Ray Data run as many decode tasks as there are CPUs and stream their
    output as each finishes. Past ``max_blocks`` blocks grow instead, since each block costs the driver a
    metadata task here and the executor a task per epoch. (Split here: ``from_pandas(override_num_blocks=)``
    fails in Ray 2.60 with current numpy, whose ``array_split`` of a DataFrame returns arrays.)

    ``first_block_split > 1`` cuts the first block into that many smaller ones, so the first rows reach the
    consumer after a fraction of a map batch; map them with a ``batch_size`` no larger than those blocks, or
    Ray Data bundles them back into one task.
    """
    import ray.data

    step = max(1, rows_per_block, math.ceil(len(df) / max(1, max_blocks)))
    first = min(step, rows_per_block) if first_block_split > 1 else step
    head = max(1, first // max(1, first_block_split))
    starts = [*range(0, min(first, len(df)), head), *range(first, len(df), step)]
    # a fresh RangeIndex per block: expressions (with_column) build pandas columns that align on the index
    if not starts:  # no rows
        return ray.data.from_pandas([df])
    parts = [df.iloc[a:b].reset_index(drop=True) for a, b in zip(starts, [*starts[1:], len(df)], strict=True)]
    return ray.data.from_pandas(parts)


def _check_images(table: LabelTable, on_bad_rows: str, source: str, use_ray: bool = True) -> LabelTable:
    if use_ray:
        from prism.runtime.ray_cluster import ensure_ray

        ensure_ray()
        probe = rows_dataset(table.rows[["path"]], 64).map_batches(check_decodable, batch_size=64)
        bad = probe.to_pandas()
    else:
        bad = pd.DataFrame(check_decodable({"path": table.rows["path"].to_numpy()}))
    if bad.empty:
        return table
    return raise_or_skip(table, bad[["path", "reason"]], on_bad_rows, source)


def configure_context(ctx, deterministic: bool) -> None:
    """Prism's settings of a dataset's own ``DataContext``: block order kept when ``deterministic``, a
    decode error (e.g. :class:`~prism.data.table.BadRowsError` naming the bad files) raised as itself
    rather than as Ray Data's ``UserCodeException``, so the driver can report it as the data error it is
    (:func:`prism.engine.failures.data_error`), and decoding on every CPU with a bounded queue ahead of the
    consumer (:func:`prism.data.backpressure.configure_backpressure`)."""
    from prism.data.backpressure import configure_backpressure

    ctx.execution_options.preserve_order = deterministic
    ctx.raise_original_map_exception = True
    configure_backpressure(ctx)


def build_datasets(cfg: JobConfig, task: Task, img_size: int) -> TrainData:
    """Validate the labels and images, split, and build the lazy train/val Ray datasets (``data.source:
    webdataset``: :func:`prism.data.webdataset.build_webdataset`)."""
    if cfg.data.source == "webdataset":
        from prism.data.webdataset import build_webdataset

        return build_webdataset(cfg, task, img_size)
    import ray.data
    from ray.data.expressions import random

    from prism.runtime.ray_cluster import ensure_ray

    d = cfg.data
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = d.progress_bars
    split = split_labels(cfg, task)
    train_df, val_df = split.train, split.val
    ensure_ray()
    if d.labels_path() is None:
        _warn_if_node_local(split.labels_csv.parent, "data.synthetic.cache_dir")
    a = d.augment
    decode_train = DecodeImages(img_size, train=True, hflip=a.hflip, vflip=a.vflip, rot90=a.rot90,
                                crop_scale=a.crop_scale, crop_ratio=a.crop_ratio, brightness=a.brightness)
    # a seed per row and epoch: Ray derives it from train.seed, the block's task index and the execution
    # (epoch) index, so augmentation differs between epochs and repeats between runs
    # batches of the small first blocks' size: Ray Data would bundle small blocks up to a larger batch size
    decode_rows = max(1, d.map_batch_size // FIRST_BLOCK_SPLIT)
    train = (rows_dataset(train_df, d.map_batch_size, first_block_split=FIRST_BLOCK_SPLIT)
             .with_column(AUG_SEED_COLUMN, random(seed=cfg.train.seed, reseed_after_execution=True))
             .map_batches(decode_train, batch_size=decode_rows))
    val = (rows_dataset(val_df, d.map_batch_size, first_block_split=FIRST_BLOCK_SPLIT)
           .map_batches(DecodeImages(img_size), batch_size=decode_rows))
    for ds in (train, val):  # each dataset has its own copy of the context: the process's is left alone
        configure_context(ds.context, d.deterministic)
    return TrainData(train, val, len(train_df), len(val_df), split.table.skipped, split.labels_csv,
                     split.val_fingerprint)
