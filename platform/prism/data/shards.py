"""Writing WebDataset tar shards: an image folder + labels CSV, or QuickDraw ``.ndjson`` drawings.

A sample is the members ``<key>.<ext>`` (the image's bytes as they are, ``png`` / ``jpg`` / ``webp``),
``<key>.cls`` (the class index, in the order of the class list written next to the shards as
``classes.txt``) and ``<key>.txt`` (the class name), as ``webdataset``'s ``ShardWriter`` writes them:
``<prefix>-000000.tar``, ``<prefix>-000001.tar``, … of ``per_shard`` samples each. What reads them back:
``data.source: webdataset`` (:mod:`prism.data.webdataset`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

__all__ = ["IMAGE_EXTS", "ShardSet", "quickdraw_to_shards", "table_to_shards", "write_class_list",
           "write_shards"]

IMAGE_EXTS = ("jpg", "png", "webp")
"""Image members a shard sample may hold (``jpeg`` files are stored as ``jpg``)."""


@dataclass
class ShardSet:
    """What a conversion wrote: the shards of one split, their brace pattern and the sample count."""

    shards: list[Path]
    samples: int

    @property
    def pattern(self) -> str:
        """``<dir>/<prefix>-{000000..00000N}.tar``: what ``data.webdataset.train`` / ``val`` takes."""
        first, last = self.shards[0], self.shards[-1]
        prefix, a = first.stem.rsplit("-", 1)
        b = last.stem.rsplit("-", 1)[1]
        return str(first.parent / f"{prefix}-{{{a}..{b}}}.tar") if a != b else str(first)


def write_class_list(path: str | Path, classes: Sequence[str]) -> Path:
    """``classes`` one per line (what ``task.classes_file`` reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{c}\n" for c in classes))
    return path


def write_shards(samples: Iterable[dict], out_dir: str | Path, prefix: str = "train", per_shard: int = 1000,
                 total: int | None = None, progress: bool = True) -> ShardSet:
    """Write ``samples`` (dicts with ``__key__`` and members ``ext -> bytes | str | int``) to shards of
    ``per_shard`` samples; ``ValueError`` when there is none (no empty shard is left behind)."""
    import webdataset as wds

    if per_shard < 1:
        raise ValueError(f"per_shard={per_shard} must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    it = iter(samples)
    first = next(it, None)
    if first is None:
        raise ValueError(f"no samples to write for '{prefix}'")
    written: list[Path] = []
    count = 0
    with wds.ShardWriter(str(out / f"{prefix}-%06d.tar"), maxcount=per_shard, verbose=0,
                         post=lambda f: written.append(Path(f))) as sink:
        for sample in tqdm(_chain(first, it), total=total, desc=f"shards {prefix}", unit="img",
                           disable=not progress):
            sink.write(sample)
            count += 1
    return ShardSet(written, count)


def _chain(first: dict, rest: Iterator[dict]) -> Iterator[dict]:
    yield first
    yield from rest


def _image_ext(path: str) -> str:
    ext = Path(path).suffix.lower().lstrip(".")
    ext = "jpg" if ext == "jpeg" else ext
    if ext not in IMAGE_EXTS:
        raise ValueError(f"{path}: image files must be one of {', '.join(IMAGE_EXTS)} (jpeg too) to be sharded")
    return ext


def table_to_shards(labels_csv: str | Path, out_dir: str | Path, classes: Sequence[str], *,
                    label_column: str = "label", image_column: str = "image", image_root: str | Path | None = None,
                    prefix: str = "train", per_shard: int = 1000, on_bad_rows: str = "error",
                    progress: bool = True) -> ShardSet:
    """Shards of the images of a labels CSV (checked as training checks it: files exist, labels are in
    ``classes``); the image bytes are copied, not re-encoded. Writes ``classes.txt`` next to them."""
    import pandas as pd

    from prism.data.images import read_bytes
    from prism.data.table import read_label_table

    index = {c: i for i, c in enumerate(classes)}

    def unknown(df: pd.DataFrame) -> pd.Series:
        col = df[label_column].astype(str).str.strip()
        return col.map(lambda v: "" if v in index else f"label {v!r} is not in the class list")

    table = read_label_table(Path(labels_csv), image_column, [label_column], unknown, on_bad_rows,
                             image_root=None if image_root is None else Path(image_root))
    rows = table.rows
    digits = max(8, len(str(len(rows))))

    def samples() -> Iterator[dict]:
        for i, (path, label) in enumerate(zip(rows["path"], rows[label_column], strict=True)):
            name = str(label).strip()
            yield {"__key__": f"{i:0{digits}d}", _image_ext(path): read_bytes(path), "cls": index[name],
                   "txt": name}

    shards = write_shards(samples(), out_dir, prefix, per_shard, total=len(rows), progress=progress)
    write_class_list(Path(out_dir) / "classes.txt", classes)
    return shards


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def quickdraw_to_shards(ndjson_dir: str | Path, out_dir: str | Path, classes: Sequence[str],
                        held_out: Sequence[str] = (), *, per_class: int = 1000, test_fraction: float = 0.1,
                        size: int = 128, line_width: float | None = None, per_shard: int = 1000, seed: int = 0,
                        recognized_only: bool = True, progress: bool = True) -> dict[str, ShardSet]:
    """QuickDraw ``<class>.ndjson`` files (``full_simplified_<class>.ndjson`` too) → rendered PNG shards.

    The first ``per_class`` drawings of each class (recognised ones only, unless ``recognized_only`` is
    off) are rendered at ``size`` px. Classes in ``classes`` are split into ``train`` and ``test``
    (``test_fraction`` of each class, chosen with ``seed``); classes in ``held_out`` all go to ``heldout``
    (for zero-shot evaluation). Samples are interleaved across classes so that every shard mixes them.
    Writes ``classes.txt`` (the seen classes, the label indices of train/test) and ``heldout_classes.txt``
    (the indices of heldout samples' ``.cls``); ``.txt`` always holds the name.
    """
    from prism.data.quickdraw import read_ndjson, render_drawing

    overlap = sorted(set(classes) & set(held_out))
    if overlap:
        raise ValueError(f"classes and held-out classes overlap: {overlap}")
    src = Path(ndjson_dir)
    rng = np.random.default_rng(seed)
    width = line_width if line_width is not None else max(1.0, size / 40)

    def drawings(name: str) -> list:
        candidates = [src / f"{name}.ndjson", src / f"full_simplified_{name}.ndjson"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"no drawings of class {name!r}: none of {[str(p) for p in candidates]}")
        out = []
        for d in read_ndjson(path):
            if d.recognized or not recognized_only:
                out.append(d)
            if len(out) == per_class:
                break
        if not out:
            raise ValueError(f"{path}: no drawings{' recognised' if recognized_only else ''}")
        return out

    splits: dict[str, list[tuple[int, str, object]]] = {"train": [], "test": [], "heldout": []}
    for idx, name in enumerate(classes):
        ds = drawings(name)
        n_test = round(len(ds) * test_fraction)
        for rank, j in enumerate(rng.permutation(len(ds))):
            splits["test" if rank < n_test else "train"].append((idx, name, ds[j]))
    for idx, name in enumerate(held_out):
        splits["heldout"] += [(idx, name, d) for d in drawings(name)]
    written: dict[str, ShardSet] = {}
    for split, items in splits.items():
        if not items:
            continue
        items = [items[i] for i in rng.permutation(len(items))]

        def samples(items=items, split=split) -> Iterator[dict]:
            for i, (idx, name, d) in enumerate(items):
                yield {"__key__": f"{split}_{i:08d}_{d.key_id}", "png": _png(render_drawing(d.strokes, size, width)),
                       "cls": idx, "txt": name}

        written[split] = write_shards(samples(), out_dir, split, per_shard, total=len(items), progress=progress)
    write_class_list(Path(out_dir) / "classes.txt", classes)
    if held_out:
        write_class_list(Path(out_dir) / "heldout_classes.txt", held_out)
    return written
