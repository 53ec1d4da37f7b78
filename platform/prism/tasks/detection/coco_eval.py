"""COCO box evaluation of a detector's outputs, in COCO's own terms.

The model predicts, per resized input image, boxes as normalised (cx, cy, w, h) and *contiguous* class
indices. COCO scores pixel (x, y, w, h) boxes in the **original** image size with the dataset's
**category ids**; :func:`to_coco_detections` converts one image's predictions, and :func:`coco_box_stats`
runs faster-coco-eval (the same statistics as pycocotools, checked in the tests) over a ground-truth
dict in COCO's ``instances_*.json`` layout::

    AP  AP50  AP75  APs  APm  APl  AR1  AR10  AR100  ARs  ARm  ARl
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_convert

__all__ = ["STAT_NAMES", "coco_box_stats", "run_coco_eval", "to_coco_detections"]

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def to_coco_detections(image_id: int, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                       size: tuple[int, int], category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """One image's detections → COCO result dicts: ``boxes`` (N, 4) normalised cxcywh, ``scores`` (N,),
    ``labels`` (N,) contiguous indices into ``category_ids``; ``size`` = the original (width, height)."""
    w, h = size
    scale = torch.tensor([w, h, w, h], dtype=torch.float64)
    xywh = box_convert(boxes.detach().double().cpu() * scale, "cxcywh", "xywh")
    cats = np.asarray(category_ids)[labels.detach().cpu().numpy()]
    return [{"image_id": int(image_id), "category_id": int(c), "bbox": [float(v) for v in b], "score": float(s)}
            for b, s, c in zip(xywh.tolist(), scores.detach().cpu().tolist(), cats.tolist(), strict=True)]


def run_coco_eval(ground_truth: dict[str, Any], detections: list[dict[str, Any]],
                  image_ids: Sequence[int] | None = None, matches: bool = False):
    """faster-coco-eval's ``COCOeval`` of ``detections`` on ``ground_truth``, evaluated, accumulated and
    summarised (``.stats``, ``.eval["precision"]`` (T, R, K, A, M) …); ``matches``: also flag every detection
    ``tp`` / ``fp`` at IoU 0.5 (``.cocoDt.anns``). ``detections`` must not be empty."""
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(copy.deepcopy(ground_truth))
        dt = gt.loadRes(copy.deepcopy(detections))
        ev = COCOeval_faster(gt, dt, "bbox", extra_calc=matches)
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def coco_box_stats(ground_truth: dict[str, Any], detections: list[dict[str, Any]],
                   image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """The 12 COCO box statistics of ``detections`` on ``ground_truth`` (a COCO dict), over ``image_ids``
    (None = every image of the ground truth). No detections at all scores 0 (COCO cannot load an empty
    result list); an image without annotations counts only through its false positives."""
    if not detections:
        return dict.fromkeys(STAT_NAMES, 0.0)
    ev = run_coco_eval(ground_truth, detections, image_ids)
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats[:12], strict=True)}
