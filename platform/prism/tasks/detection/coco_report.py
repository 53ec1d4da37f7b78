"""What a COCO evaluation says beyond its 12 numbers: per-class AP, precision–recall curves, the confidence
of true and false positives, and how many boxes of each class there are and were predicted.

:func:`detection_report` reads one faster-coco-eval run (:func:`~prism.tasks.detection.coco_eval.run_coco_eval`)
and returns a JSON-able dict, the ``stats`` a detection model's checkpoint and ``prism evaluate`` keep::

    stats       {"AP": …, "AP50": …, … "ARl": …}                 COCO's summary (area all, 100 detections)
    per_class   [{"category_id", "category", "AP", "AP50", "AP75", "ground_truth", "predicted"}]
    pr          {"recall": (101,), "iou50": {"all": (101,), "<id>": (101,)}, "iou75": {…}}   precision
    confidence  {"edges": (21,), "tp": (20,), "fp": (20,)}   detection scores, matched at IoU 0.5 or not
    score_threshold, n_images, n_detections

Per-class AP is COCO's own: ``precision[:, :, k, area=all, maxDets=100]`` averaged over the entries that
exist (-1 = a class without ground truth: ``None``), so the mean over classes with ground truth is ``AP``.
A precision of -1 (no recall reached) is ``None`` in a curve.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from prism.tasks.detection.coco_eval import STAT_NAMES, run_coco_eval

__all__ = ["COUNT_THRESHOLD", "detection_report"]

COUNT_THRESHOLD = 0.3
"""The score from which a detection counts as predicted in the class counts when the task keeps every
detection (``task.score_threshold: 0``, ranked lists as COCO scores them)."""

IOU50, IOU75 = 0, 5
"""Indices of IoU 0.5 and 0.75 in COCO's thresholds 0.50:0.05:0.95."""
AREA_ALL, MAX_DETS_100 = 0, 2


def _mean_valid(a: np.ndarray) -> float | None:
    valid = a[a > -1]
    return float(valid.mean()) if valid.size else None


def _curve(precision: np.ndarray) -> list[float | None]:
    """(R, K') precision at each recall threshold over some classes → the mean over classes that reach it."""
    return [_mean_valid(row) for row in precision]


def detection_report(ground_truth: dict[str, Any], detections: list[dict[str, Any]],
                     image_ids: Sequence[int] | None = None, score_threshold: float = COUNT_THRESHOLD,
                     bins: int = 20) -> dict[str, Any]:
    """The report of ``detections`` (COCO results, pixels, dataset ids) on ``ground_truth`` (a COCO dict)
    over ``image_ids`` (None = all its images); ``predicted`` counts detections scoring ≥ ``score_threshold``."""
    ids = sorted({int(i) for i in image_ids} if image_ids is not None
                 else {int(im["id"]) for im in ground_truth["images"]})
    keep = set(ids)
    cats = sorted(({"id": int(c["id"]), "name": str(c.get("name", c["id"]))} for c in ground_truth["categories"]),
                  key=lambda c: c["id"])
    dets = [d for d in detections if int(d["image_id"]) in keep]
    gt_count = Counter(int(a["category_id"]) for a in ground_truth["annotations"]
                       if int(a["image_id"]) in keep and not a.get("iscrowd", 0))
    pred_count = Counter(int(d["category_id"]) for d in dets if d["score"] >= score_threshold)
    edges = np.linspace(0.0, 1.0, bins + 1)
    out: dict[str, Any] = {"score_threshold": score_threshold, "n_images": len(ids), "n_detections": len(dets),
                           "pr": {"recall": np.linspace(0, 1, 101).round(2).tolist()},
                           "confidence": {"edges": edges.tolist(), "tp": [0] * bins, "fp": [0] * bins}}
    if not dets:
        out["stats"] = dict.fromkeys(STAT_NAMES, 0.0)
        out["per_class"] = [{"category_id": c["id"], "category": c["name"], "AP": None, "AP50": None, "AP75": None,
                             "ground_truth": gt_count[c["id"]], "predicted": 0} for c in cats]
        return out
    ev = run_coco_eval(ground_truth, dets, ids, matches=True)
    precision = np.asarray(ev.eval["precision"])[:, :, :, AREA_ALL, MAX_DETS_100]  # (T, R, K)
    order = [int(k) for k in ev.params.catIds]
    out["stats"] = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats[:12], strict=True)}
    names = {c["id"]: c["name"] for c in cats}
    out["per_class"] = [{"category_id": cid, "category": names.get(cid, str(cid)),
                         "AP": _mean_valid(precision[:, :, k]), "AP50": _mean_valid(precision[IOU50, :, k]),
                         "AP75": _mean_valid(precision[IOU75, :, k]), "ground_truth": gt_count[cid],
                         "predicted": pred_count[cid]} for k, cid in enumerate(order)]
    for key, t in (("iou50", IOU50), ("iou75", IOU75)):
        curves = {"all": _curve(precision[t])}
        curves.update({str(cid): _curve(precision[t, :, k:k + 1]) for k, cid in enumerate(order)})
        out["pr"][key] = curves
    scores = {True: [], False: []}
    for ann in ev.cocoDt.anns.values():
        scores[bool(ann.get("tp"))].append(float(ann["score"]))
    for flag, key in ((True, "tp"), (False, "fp")):
        out["confidence"][key] = np.histogram(np.clip(scores[flag], 0, 1), bins=edges)[0].astype(int).tolist()
    return out
