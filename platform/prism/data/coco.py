"""COCO ``instances_*.json`` → one row per image, with real category ids, checked before any work starts.

Rows (a DataFrame): ``image_id``, ``path`` (under the image folder), ``width``, ``height``, ``boxes``
(N, 4) float32 pixel xywh, ``category_id`` (N,) int64 — the dataset's ids, never an index — ``iscrowd``
(N,) bool and ``area`` (N,) float64 (the annotation's own ``area``, the segment's in COCO, which its size
ranges use; w·h where absent). Checks, with the image or annotation id named:

- a file that is not COCO JSON (or lacks ``images`` / ``annotations`` / ``categories``): an error; with
  ``require_annotations=False`` a file without ``annotations`` (test-dev's ``image_info_*.json``) reads as
  images without boxes, ``CocoTable.annotated`` False;
- an annotation of an unknown image or category: an error;
- a box outside its image (beyond one pixel of slack) or of zero width / height: ``on_bad="error"`` stops
  naming the image, ``"skip"`` drops the box and counts it (as DETR's loader drops degenerate boxes);
- crowd boxes are kept and flagged (training ignores them, COCO's evaluation treats them as "ignore").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = ["CocoTable", "read_coco"]

SLACK = 1.0


@dataclass
class CocoTable:
    """The images of a COCO file, their categories in id order, and the boxes dropped (``skipped``)."""

    rows: pd.DataFrame
    categories: list[dict[str, Any]]
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["image_id", "annotation_id",
                                                                               "reason"]))
    annotated: bool = True
    """False for a file without ``annotations`` (test-dev): nothing to score, predictions only."""

    @property
    def category_ids(self) -> list[int]:
        """The dataset's ids in the model's order: model index i ↔ ``category_ids[i]``."""
        return [int(c["id"]) for c in self.categories]

    def ground_truth(self) -> dict[str, Any]:
        """The rows as a COCO dict (what :func:`prism.tasks.detection.coco_eval.coco_box_stats` scores)."""
        images, anns = [], []
        for r in self.rows.itertuples():
            images.append({"id": int(r.image_id), "width": int(r.width), "height": int(r.height),
                           "file_name": str(r.path)})
            for box, cat, crowd, area in zip(r.boxes, r.category_id, r.iscrowd, r.area, strict=True):
                anns.append({"id": len(anns) + 1, "image_id": int(r.image_id), "category_id": int(cat),
                             "bbox": [float(v) for v in box], "area": float(area), "iscrowd": int(crowd)})
        return {"images": images, "annotations": anns, "categories": self.categories}


def _load(path: Path, require_annotations: bool = True) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"COCO annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON: {e}") from None
    keys = ("images", "annotations", "categories") if require_annotations else ("images", "categories")
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{path} is not a COCO instances file: no {missing}")
    return data


def read_coco(json_path: str | Path, image_root: str | Path | None = None,
              on_bad: Literal["error", "skip"] = "error", require_annotations: bool = True) -> CocoTable:
    """Read and check ``json_path``; image files are under ``image_root`` (default: the JSON's folder)."""
    path = Path(json_path)
    data = _load(path, require_annotations)
    root = Path(image_root) if image_root is not None else path.parent
    images = {int(im["id"]): im for im in data["images"]}
    categories = sorted(({"id": int(c["id"]), "name": str(c.get("name", c["id"]))} for c in data["categories"]),
                        key=lambda c: c["id"])
    known = {c["id"] for c in categories}
    per_image: dict[int, list[tuple[list[float], int, bool, float]]] = {i: [] for i in images}
    skipped = []
    for a in data.get("annotations", []):
        image_id, cat = int(a["image_id"]), int(a["category_id"])
        if image_id not in images:
            raise ValueError(f"{path}: annotation {a.get('id')} is of image id {image_id}, which the file does not list")
        if cat not in known:
            raise ValueError(f"{path}: annotation {a.get('id')} (image id {image_id}) has category id {cat}; "
                             f"the categories are {sorted(known)}")
        x, y, w, h = (float(v) for v in a["bbox"])
        im = images[image_id]
        reason = None
        if w <= 0 or h <= 0:
            reason = f"degenerate box {a['bbox']}"
        elif x < -SLACK or y < -SLACK or x + w > im["width"] + SLACK or y + h > im["height"] + SLACK:
            reason = f"box {a['bbox']} outside the {im['width']}x{im['height']} image"
        if reason is not None:
            if on_bad == "error":
                raise ValueError(f"{path}: image id {image_id} ({im.get('file_name')}), annotation {a.get('id')}: "
                                 f"{reason}; fix it or read with on_bad='skip' (data.on_bad_rows: skip)")
            skipped.append({"image_id": image_id, "annotation_id": a.get("id"), "reason": reason})
            continue
        x0, y0 = max(0.0, x), max(0.0, y)  # clipped to the image, as COCO's slack allows
        box = [x0, y0, min(x + w, im["width"]) - x0, min(y + h, im["height"]) - y0]
        per_image[image_id].append((box, cat, bool(a.get("iscrowd", 0)), float(a.get("area", w * h))))
    rows = []
    for image_id, im in sorted(images.items()):
        anns = per_image[image_id]
        rows.append({"image_id": image_id, "path": str(root / im["file_name"]), "width": int(im["width"]),
                     "height": int(im["height"]),
                     "boxes": np.array([a[0] for a in anns], dtype=np.float32).reshape(-1, 4),
                     "category_id": np.array([a[1] for a in anns], dtype=np.int64),
                     "iscrowd": np.array([a[2] for a in anns], dtype=bool),
                     "area": np.array([a[3] for a in anns], dtype=np.float64)})
    skipped_df = pd.DataFrame(skipped, columns=["image_id", "annotation_id", "reason"])
    return CocoTable(pd.DataFrame(rows), categories, skipped_df, annotated="annotations" in data)
