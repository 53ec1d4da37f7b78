"""The detector's metric accumulator: top-k as Deformable DETR ranks, predictions in canvas coordinates
scored in the original pixels, two workers' states merged = one pass = pycocotools on the same boxes."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_convert

from prism.tasks.detection.coco_eval import STAT_NAMES
from prism.tasks.detection.metrics import CocoDetectionMetrics, top_detections
from tests.helpers.coco import CATEGORY_IDS, pycocotools_stats, random_coco

CANVAS = 64


def test_top_detections_ranks_every_query_class_pair():
    logits = torch.tensor([[[0.0, 3.0], [2.0, -1.0], [-5.0, 1.0]]])
    boxes = torch.arange(12, dtype=torch.float32).view(1, 3, 4)
    scores, labels, picked = top_detections(logits, boxes, k=3)
    assert labels.tolist() == [[1, 0, 1]]
    torch.testing.assert_close(scores, torch.tensor([[3.0, 2.0, 1.0]]).sigmoid())
    torch.testing.assert_close(picked[0], boxes[0, [0, 1, 2]])


def model_view(gt, dets):
    """Per image: its detections as canvas-normalised boxes and logits, as the decoder would give them."""
    sizes = {im["id"]: (im["width"], im["height"]) for im in gt["images"]}
    per = {i: [] for i in sizes}
    for d in dets:
        per[d["image_id"]].append(d)
    out = []
    for image_id, ds in per.items():
        w, h = sizes[image_id]
        r = CANVAS / max(w, h)  # the eval letterbox: pixels * r on a CANVAS-sided canvas
        xywh = torch.tensor([d["bbox"] for d in ds], dtype=torch.float64).reshape(-1, 4)
        canvas = box_convert(xywh * r / CANVAS, "xywh", "cxcywh")
        q = max(1, len(ds))
        logits = torch.full((1, q, len(CATEGORY_IDS)), -30.0)
        for j, d in enumerate(ds):
            logits[0, j, CATEGORY_IDS.index(d["category_id"])] = float(torch.logit(torch.tensor(d["score"])))
        box_t = torch.zeros(1, q, 4)
        box_t[0, :len(ds)] = canvas
        out.append(({"logits": logits, "boxes": box_t}, [{"image_id": image_id, "size": (w, h)}]))
    return out


def test_merged_workers_score_what_pycocotools_scores():
    gt, dets = random_coco(4)
    ref = pycocotools_stats(gt, dets)
    whole, halves = CocoDetectionMetrics(gt, CATEGORY_IDS, CANVAS, k=1), [
        CocoDetectionMetrics(gt, CATEGORY_IDS, CANVAS, k=1), CocoDetectionMetrics(gt, CATEGORY_IDS, CANVAS, k=1)]
    views = model_view(gt, dets)
    for i, (preds, targets) in enumerate(views):
        k = max(1, preds["boxes"].shape[1])
        for acc in (whole, halves[i % 2]):
            acc.k = k
            acc.update(preds, targets)
    # a query's other classes rank too (at sigmoid(-30)): drop them, as a score threshold would
    for acc in (whole, *halves):
        acc.detections = [d for d in acc.detections if d["score"] > 1e-9]
    merged = CocoDetectionMetrics(gt, CATEGORY_IDS, CANVAS)
    for h in halves:
        merged.merge(h.state())
    got, one = merged.compute(), whole.compute()
    for name in STAT_NAMES:
        assert got[f"val/{name}"] == pytest.approx(one[f"val/{name}"], abs=1e-12)
        assert got[f"val/{name}"] == pytest.approx(ref[name], abs=1e-6), name  # boxes pass through float32
