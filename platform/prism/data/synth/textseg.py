"""Synthetic text-prompted segmentation data: a circle and a square in every image, in the VOC layout.

Both shapes get colours from the same distribution and random sizes and places (never overlapping), so only
their form tells them apart: a model must read the prompt ("circle" or "square") to pick its object.

::

    out_dir/JPEGImages/NNNNN.jpg
    out_dir/SegmentationClass/NNNNN.png          palette PNG: 0 background, 1 circle, 2 square
    out_dir/ImageSets/Segmentation/train.txt     ids, one per line (val.txt: ``val_fraction`` of them)
    out_dir/classes.json                         {"1": "circle", "2": "square"}
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

__all__ = ["TEXTSEG_CLASSES", "VOC_PALETTE", "generate_textseg", "textseg_sample"]

TEXTSEG_CLASSES = {1: "circle", 2: "square"}


def _voc_palette() -> list[int]:
    """PASCAL VOC's colour map (index i → the bit-interleaved colour VOC's PNGs use), 256 × RGB."""
    out = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += [r, g, b]
    return out


VOC_PALETTE = _voc_palette()


def textseg_sample(seed: int, index: int, size: int = 96) -> tuple[Image.Image, np.ndarray]:
    """One RGB image with a circle and a square, and its (size, size) uint8 class map (0, 1, 2)."""
    rng = np.random.default_rng([seed, index])
    bg = np.clip(rng.integers(0, 90, 3) + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(bg)
    label = Image.new("L", (size, size), 0)
    draw, mark = ImageDraw.Draw(img), ImageDraw.Draw(label)
    boxes: list[tuple[int, int, int, int]] = []
    for cls in (1, 2):
        for _ in range(100):  # a place that does not overlap the other shape
            side = int(rng.uniform(0.25, 0.45) * size)
            x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
            box = (x0, y0, x0 + side - 1, y0 + side - 1)
            if all(box[2] < o[0] or o[2] < box[0] or box[3] < o[1] or o[3] < box[1] for o in boxes):
                break
        boxes.append(box)
        colour = tuple(int(c) for c in rng.integers(140, 256, 3))
        shape = draw.ellipse if cls == 1 else draw.rectangle
        shape(box, fill=colour)
        (mark.ellipse if cls == 1 else mark.rectangle)(box, fill=cls)
    return img, np.asarray(label, dtype=np.uint8)


def generate_textseg(out_dir: str | Path, n: int = 200, size: int = 96, seed: int = 0, progress: bool = True,
                     overwrite: bool = False, val_fraction: float = 0.2) -> Path:
    """Write ``n`` images in the VOC layout of the module docstring; returns ``out_dir``."""
    out = Path(out_dir)
    if n < 2:
        raise ValueError(f"n={n} must be >= 2 (a training and a validation image)")
    if (out / "classes.json").exists() and not overwrite:
        raise ValueError(f"{out} already holds a data set (classes.json); pass overwrite=True or pick a new out_dir")
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"{i:05d}" for i in range(n)]
    for i, name in enumerate(tqdm(ids, desc="textseg", disable=not progress, unit="img")):
        img, label = textseg_sample(seed, i, size)
        img.save(out / "JPEGImages" / f"{name}.jpg", quality=95)
        mask = Image.fromarray(label, mode="P")
        mask.putpalette(VOC_PALETTE)
        mask.save(out / "SegmentationClass" / f"{name}.png")
    n_val = max(1, round(n * val_fraction))
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(set(ids) - set(val))
    (out / "ImageSets/Segmentation/train.txt").write_text("\n".join(train) + "\n")
    (out / "ImageSets/Segmentation/val.txt").write_text("\n".join(val) + "\n")
    (out / "classes.json").write_text(json.dumps({str(k): v for k, v in TEXTSEG_CLASSES.items()}))
    return out
