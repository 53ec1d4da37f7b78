"""Synthetic detection data: shapes on noisy backgrounds, written as a COCO ``instances.json``.

Each image holds 0–``max_objects`` filled shapes (circle, square, triangle) of random size, colour and
place; the annotations are their pixel boxes (x, y, w, h) with COCO's fields. The category ids are
deliberately not contiguous (1, 4, 7), so code that writes model indices where COCO wants ids fails its
tests. ``out_dir/images/NNNNN.png`` + ``out_dir/instances.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

__all__ = ["SHAPE_CATEGORIES", "generate_shapes", "shapes_sample"]

SHAPE_CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 4, "name": "square"}, {"id": 7, "name": "triangle"}]


def shapes_sample(seed: int, index: int, size: int = 128, max_objects: int = 3, empty_fraction: float = 0.05
                  ) -> tuple[Image.Image, list[dict]]:
    """One image and its annotations ``[{"bbox": [x, y, w, h], "category_id", "area", "iscrowd": 0}]``."""
    rng = np.random.default_rng([seed, index])
    base = rng.integers(0, 90, 3)
    bg = np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(bg)
    draw = ImageDraw.Draw(img)
    anns = []
    n = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_objects + 1))
    for _ in range(n):
        cat = SHAPE_CATEGORIES[int(rng.integers(len(SHAPE_CATEGORIES)))]
        side = float(rng.uniform(0.12, 0.45) * size)
        x, y = float(rng.uniform(0, size - side)), float(rng.uniform(0, size - side))
        colour = tuple(int(c) for c in rng.integers(140, 256, 3))
        x0, y0, x1, y1 = round(x), round(y), round(x + side), round(y + side)
        if cat["name"] == "circle":
            draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=colour)
        elif cat["name"] == "square":
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)
        else:
            draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=colour)
        w, h = x1 - x0, y1 - y0
        anns.append({"bbox": [float(x0), float(y0), float(w), float(h)], "category_id": cat["id"],
                     "area": float(w * h), "iscrowd": 0})
    return img, anns


def generate_shapes(out_dir: str | Path, n: int = 600, size: int = 128, seed: int = 0, progress: bool = True,
                    overwrite: bool = False, max_objects: int = 3) -> Path:
    """Write ``n`` images and ``instances.json`` (COCO) to ``out_dir``; returns ``out_dir``."""
    out = Path(out_dir)
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    target = out / "instances.json"
    if target.exists() and not overwrite:
        raise ValueError(f"{out} already holds a data set (instances.json); pass overwrite=True or pick a new out_dir")
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in tqdm(range(n), desc="shapes", disable=not progress, unit="img"):
        img, anns = shapes_sample(seed, i, size, max_objects)
        name = f"images/{i:05d}.png"
        img.save(out / name)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for a in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **a})
    tmp = target.with_suffix(".json.tmp")  # instances.json appears once every image is written
    tmp.write_text(json.dumps({"images": images, "annotations": annotations, "categories": SHAPE_CATEGORIES}))
    tmp.replace(target)
    return out
