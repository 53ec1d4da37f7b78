"""Synthetic sketches in QuickDraw's simplified format: any class names, drawn from a template per class.

Each class name seeds (via sha256) a *template*: 1–3 strokes of 3–6 control points on the unit square.
A drawing of that class is the template under a random similarity transform (scale, rotation, shift) with
per-point jitter, resampled along each segment and quantised to the simplified format's 0..255 grid —
different classes are different shapes, drawings of one class vary, and a class name always gives the same
template (so a held-out class is the same class in every split).

:func:`write_sketch_ndjson` writes one ``<class>.ndjson`` per class (what QuickDraw publishes, e.g. for
``prism data quickdraw``); :func:`generate_sketches` renders drawings to ``images/*.png`` + ``labels.csv``
(the synthetic data of the ``classify`` task).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from prism.data.quickdraw import render_drawing

__all__ = ["DEFAULT_CLASSES", "class_template", "generate_sketches", "sketch_record", "sketch_strokes",
           "write_sketch_ndjson"]

DEFAULT_CLASSES = ("apple", "bicycle", "cat", "door", "envelope", "fish", "guitar", "house", "key", "ladder")


def _class_rng(name: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))


def class_template(name: str) -> list[np.ndarray]:
    """The strokes (control points ``(N, 2)`` in ``[0.1, 0.9]²``) that class ``name`` is drawn from."""
    rng = _class_rng(name)
    strokes = []
    for _ in range(int(rng.integers(1, 4))):
        n = int(rng.integers(3, 7))
        strokes.append(rng.uniform(0.1, 0.9, size=(n, 2)))
    return strokes


def sketch_strokes(name: str, rng: np.random.Generator, jitter: float = 0.035) -> list[np.ndarray]:
    """One drawing of class ``name`` in simplified-format coordinates: a list of integer ``(N, 2)`` arrays,
    top-left aligned, the longer side spanning 0..255."""
    angle = rng.uniform(-0.35, 0.35)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    scale = rng.uniform(0.75, 1.0) * np.array([1.0, rng.uniform(0.85, 1.15)])
    out = []
    for ctrl in class_template(name):
        pts = ctrl + rng.normal(0.0, jitter, ctrl.shape)
        dense = [pts[0]]
        for a, b in zip(pts[:-1], pts[1:], strict=True):  # resample: 4 points per segment, as a pen samples
            for t in (0.25, 0.5, 0.75, 1.0):
                dense.append(a + t * (b - a) + rng.normal(0.0, jitter / 4, 2))
        out.append(((np.array(dense) - 0.5) * scale) @ rot.T)
    lo = np.concatenate(out).min(axis=0)
    span = float((np.concatenate(out).max(axis=0) - lo).max()) or 1.0
    return [np.round((s - lo) / span * 255).astype(np.int64) for s in out]


def sketch_record(name: str, index: int, seed: int = 0) -> dict:
    """Drawing ``index`` of class ``name`` as a QuickDraw simplified-format record (a JSON-able dict)."""
    key = int.from_bytes(hashlib.sha256(f"{name}/{seed}/{index}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(key)
    strokes = sketch_strokes(name, rng)
    return {"word": name, "countrycode": "ZZ", "timestamp": "2017-01-01 00:00:00.000 UTC", "recognized": True,
            "key_id": str(key % 10**16), "drawing": [[s[:, 0].tolist(), s[:, 1].tolist()] for s in strokes]}


def write_sketch_ndjson(out_dir: str | Path, classes: Sequence[str] = DEFAULT_CLASSES, per_class: int = 100,
                        seed: int = 0) -> list[Path]:
    """One ``<class>.ndjson`` of ``per_class`` drawings per class in ``out_dir``; returns the files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name in classes:
        path = out / f"{name}.ndjson"
        with path.open("w") as f:
            for i in range(per_class):
                f.write(json.dumps(sketch_record(name, i, seed)) + "\n")
        files.append(path)
    return files


def generate_sketches(out_dir: str | Path, n: int = 600, size: int = 64, seed: int = 0,
                      classes: Sequence[str] = DEFAULT_CLASSES, progress: bool = True, overwrite: bool = False
                      ) -> Path:
    """Render ``n`` sketches, classes in turn, to ``out_dir/images/NNNNN.png`` and ``out_dir/labels.csv``
    (columns ``image,label``; ``image`` relative to ``out_dir``); returns ``out_dir``."""
    out = Path(out_dir)
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    classes = list(classes)
    labels_csv = out / "labels.csv"
    if labels_csv.exists() and not overwrite:
        raise ValueError(f"{out} already holds a data set (labels.csv); pass overwrite=True or pick a new out_dir")
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    digits = max(5, len(str(n - 1)))
    rows = []
    for i in tqdm(range(n), desc="sketches", disable=not progress, unit="img"):
        name = classes[i % len(classes)]
        record = sketch_record(name, i // len(classes), seed)
        strokes = [np.array(s, dtype=np.float64).T for s in record["drawing"]]
        rel = f"images/{i:0{digits}d}.png"
        render_drawing(strokes, size, line_width=max(1.0, size / 40)).save(out / rel, format="PNG")
        rows.append([rel, name])
    tmp = labels_csv.with_suffix(".csv.tmp")  # labels.csv appears only once every image is written
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label"])
        writer.writerows(rows)
    tmp.replace(labels_csv)
    return out
