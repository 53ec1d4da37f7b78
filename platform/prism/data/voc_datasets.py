"""``data.source: voc``: a VOC folder → checked rows (one per prompted class) → train / val split → lazy Ray
datasets of segmentation batches (:class:`~prism.tasks.segment.batches.DecodeSegmentation` in
``map_batches``).

Without ``data.voc.root`` the synthetic circles-and-squares set is generated once (``data.synthetic``). The
validation ids come from ``val_list`` / ``val_split``; with ``val_split: null`` a hash of the image id holds
``data.val_fraction`` of the training images out — whole images, so an image's prompts never straddle the
split.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from prism.data.voc import IMAGE_SUFFIXES, VocTable, read_voc

if TYPE_CHECKING:
    from prism.config import JobConfig
    from prism.data.datasets import TrainData

__all__ = ["build_voc_datasets", "unlabelled_rows", "voc_root", "voc_split"]

log = logging.getLogger(__name__)


def voc_root(cfg: JobConfig) -> Path:
    """``data.voc.root``, or the synthetic set's folder (generated once)."""
    if cfg.data.voc.root is not None:
        return Path(cfg.data.voc.root)
    from prism.data.synth import SYNTH_GENERATORS

    s = cfg.data.synthetic
    out = (Path(s.cache_dir) / f"textseg-n{s.n}-s{s.size}-seed{s.seed}").resolve()
    if not (out / "classes.json").is_file():
        log.info("no data.voc.root: generating %d synthetic text-prompted images in %s", s.n, out)
        SYNTH_GENERATORS["textseg"](out, n=s.n, size=s.size, seed=s.seed, progress=False)
    return out


def voc_split(cfg: JobConfig) -> tuple[VocTable, VocTable]:
    """The (train, val) rows of ``cfg.data.voc`` with ``cfg.task.classes`` as prompts."""
    v, d = cfg.data.voc, cfg.data
    root = voc_root(cfg)
    prompts = json.loads(Path(v.prompts).read_text()) if v.prompts is not None else None
    common = {"images": v.images, "masks": v.masks, "classes": cfg.task.classes, "prompts": prompts}
    train = read_voc(root, v.train_split, list_file=v.train_list, **common)
    if v.val_list is not None or v.val_split is not None:
        val = read_voc(root, v.val_split, list_file=v.val_list, **common)
        both = set(train.rows["id"]) & set(val.rows["id"])
        if both:
            raise ValueError(f"image ids {sorted(both)[:5]} are in both the training and the validation list")
    else:
        key = train.rows["id"].map(
            lambda i: int(hashlib.sha256(f"{d.split_seed}:{i}".encode()).hexdigest()[:8], 16) / 2**32)
        is_val = (key < d.val_fraction).to_numpy()
        val = VocTable(train.rows[is_val].reset_index(drop=True), [])
        train = VocTable(train.rows[~is_val].reset_index(drop=True), train.empty)
    if len(train.rows) == 0 or len(val.rows) == 0:
        raise ValueError(f"the split left {len(train.rows)} training and {len(val.rows)} validation rows")
    if v.unlabelled is not None:
        train = VocTable(pd.concat([train.rows, unlabelled_rows(v.unlabelled, cfg.task.classes)], ignore_index=True),
                         train.empty)
    return train, val


def unlabelled_rows(folder: Path, classes: dict[int, str]) -> pd.DataFrame:
    """Rows of every image under ``folder`` (recursive), without a mask (all void: distillation only); their
    prompt, unused by any loss, is the first class's."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"data.voc.unlabelled: {folder} is not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ValueError(f"data.voc.unlabelled: no image ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    prompt = classes[min(classes)]
    return pd.DataFrame([{"id": f"unlabelled/{p.relative_to(folder).with_suffix('')}", "image": str(p), "mask": "",
                          "class_index": 0, "prompt": prompt} for p in paths],
                        columns=["id", "image", "mask", "class_index", "prompt"])


def build_voc_datasets(cfg: JobConfig, img_size: int) -> TrainData:
    """Lazy Ray datasets of segmentation batches for the train loop (training: crop + flip)."""
    import ray.data

    from prism.data.datasets import TrainData, configure_context, rows_dataset
    from prism.runtime.ray_cluster import ensure_ray
    from prism.tasks.segment.batches import DecodeSegmentation

    d = cfg.data
    train, val = voc_split(cfg)
    ensure_ray()
    ray.data.DataContext.get_current().enable_progress_bars = d.progress_bars
    datasets = {}
    for name, table, is_train in (("train", train, True), ("val", val, False)):
        decode = DecodeSegmentation(img_size, cfg.task.text.name, train=is_train, hflip=d.augment.hflip,
                                    crop_scale=tuple(d.augment.crop_scale), jitter=cfg.task.jitter)
        ds = rows_dataset(table.rows, d.map_batch_size).map_batches(decode, batch_size=d.map_batch_size)
        configure_context(ds.context, d.deterministic)
        datasets[name] = ds
    skipped = pd.DataFrame({"image": train.empty, "reason": "no prompted class in its mask"})
    return TrainData(datasets["train"], datasets["val"], len(train.rows), len(val.rows), skipped, None,
                     source=f"{len(train.rows)} train / {len(val.rows)} val prompted masks (VOC)")
