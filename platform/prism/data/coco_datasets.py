"""``data.source: coco``: COCO files → checked tables → split / subset → lazy Ray datasets of detection
batches (:class:`~prism.tasks.detection.batches.DecodeDetection` in ``map_batches``).

Without ``data.coco.train`` the synthetic shapes set is generated once (``data.synthetic``) and split by
``data.val_fraction``. A ``subset`` of N training images ("mini" COCO) is drawn by ``subset_seed``, its ids
saved to ``subset_file`` and reloaded from it when it exists, for exact reproduction. ``overfit``: N training
images on both sides (debug mode: the model should memorise them).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from prism.data.coco import CocoTable, read_coco

if TYPE_CHECKING:
    from prism.config import JobConfig
    from prism.data.datasets import TrainData

__all__ = ["build_coco_datasets", "coco_split", "select_subset"]

log = logging.getLogger(__name__)
COLUMNS = ["path", "image_id", "width", "height", "boxes", "category_id", "iscrowd", "area"]


def _synthetic(cfg: JobConfig) -> Path:
    from prism.data.synth import SYNTH_GENERATORS

    s = cfg.data.synthetic
    out = (Path(s.cache_dir) / f"shapes-n{s.n}-s{s.size}-seed{s.seed}").resolve()
    if not (out / "instances.json").is_file():
        log.info("no data.coco.train: generating %d synthetic shape images in %s", s.n, out)
        SYNTH_GENERATORS["shapes"](out, n=s.n, size=s.size, seed=s.seed, progress=False)
    return out / "instances.json"


def select_subset(rows: pd.DataFrame, n: int, seed: int, file: Path | None) -> pd.DataFrame:
    """``n`` rows by ``seed`` (ids saved to ``file``), or the ids ``file`` already holds."""
    if file is not None and Path(file).is_file():
        ids = json.loads(Path(file).read_text())["image_ids"]
        missing = sorted(set(ids) - set(rows["image_id"]))
        if missing:
            raise ValueError(f"{file}: image ids {missing[:5]} are not in the annotations")
        return rows.set_index("image_id").loc[ids].reset_index()[rows.columns]
    if n > len(rows):
        raise ValueError(f"a subset of {n} images was asked for (data.coco.subset / overfit) but there are only "
                         f"{len(rows)} training images")
    pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=n, replace=False))
    out = rows.iloc[pick].reset_index(drop=True)
    if file is not None:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        Path(file).write_text(json.dumps({"seed": seed, "n": n, "image_ids": [int(i) for i in out["image_id"]]}))
    return out


def coco_split(cfg: JobConfig) -> tuple[CocoTable, CocoTable]:
    """The (train, val) tables of ``cfg.data`` after checks, split and subsets."""
    c, d = cfg.data.coco, cfg.data
    train_json = c.train if c.train is not None else _synthetic(cfg)
    train = read_coco(train_json, c.train_images, on_bad=d.on_bad_rows)
    if c.val is not None:
        val = read_coco(c.val, c.val_images, on_bad=d.on_bad_rows)
        if [x["id"] for x in val.categories] != [x["id"] for x in train.categories]:
            raise ValueError(f"{c.val} has other categories than {train_json}")
    else:  # a hash of the image id decides: the same split on every run and worker
        key = train.rows["image_id"].map(
            lambda i: int(hashlib.sha256(f"{d.split_seed}:{i}".encode()).hexdigest()[:8], 16) / 2**32)
        is_val = (key < d.val_fraction).to_numpy()
        val = CocoTable(train.rows[is_val].reset_index(drop=True), train.categories, train.skipped)
        train = CocoTable(train.rows[~is_val].reset_index(drop=True), train.categories, train.skipped)
    if c.overfit is not None:  # the same N images on both sides: can the model memorise them?
        if c.subset is not None or c.val_subset is not None:
            raise ValueError("data.coco.overfit picks its own N images; leave data.coco.subset and val_subset unset")
        rows = select_subset(train.rows, c.overfit, c.subset_seed, c.subset_file)
        return CocoTable(rows, train.categories, train.skipped), CocoTable(rows, train.categories, train.skipped)
    if c.subset is not None:
        train = CocoTable(select_subset(train.rows, c.subset, c.subset_seed, c.subset_file), train.categories,
                          train.skipped)
    if c.val_subset is not None:
        val = CocoTable(val.rows.iloc[: c.val_subset].reset_index(drop=True), val.categories, val.skipped)
    if len(train.rows) == 0 or len(val.rows) == 0:
        raise ValueError(f"the split left {len(train.rows)} training and {len(val.rows)} validation images")
    return train, val


def build_coco_datasets(cfg: JobConfig, category_ids: list[int], img_size: int) -> TrainData:
    """Lazy Ray datasets of detection batches for the train loop (training: crop + flip; validation: the
    eval letterbox)."""
    import ray.data

    from prism.data.datasets import TrainData, configure_context, rows_dataset
    from prism.runtime.ray_cluster import ensure_ray
    from prism.tasks.detection.batches import DecodeDetection

    d = cfg.data
    train, val = coco_split(cfg)
    if [x["id"] for x in train.categories] != list(category_ids):
        raise ValueError(f"the data's category ids {[x['id'] for x in train.categories]} are not the task's "
                         f"{list(category_ids)} (task.categories)")
    ensure_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = d.progress_bars
    datasets = {}
    augment = d.coco.overfit is None  # overfit mode trains on exactly what it validates on
    for name, table, is_train in (("train", train, augment), ("val", val, False)):
        decode = DecodeDetection(img_size, category_ids, train=is_train, hflip=d.augment.hflip)
        ds = rows_dataset(table.rows[COLUMNS], d.map_batch_size).map_batches(decode, batch_size=d.map_batch_size)
        configure_context(ds.context, d.deterministic)
        datasets[name] = ds
    skipped = train.skipped.rename(columns={"image_id": "image"})
    return TrainData(datasets["train"], datasets["val"], len(train.rows), len(val.rows), skipped, None,
                     source=f"{len(train.rows)} train / {len(val.rows)} val images (COCO)")
