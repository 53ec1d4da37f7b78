"""Prism's COCO box metric equals pycocotools run directly: random ground truth (non-contiguous category
ids, crowd boxes, all three size ranges, an image without objects) and random detections, scored once in
pixels through pycocotools and once as the model would hand them over (normalised cxcywh in a resized
image, contiguous labels) through Prism's conversion and faster-coco-eval."""

from __future__ import annotations

import pytest
import torch

from prism.tasks.detection.coco_eval import STAT_NAMES, coco_box_stats, to_coco_detections
from tests.helpers.coco import CATEGORY_IDS, pycocotools_stats, random_coco


def as_model_outputs(gt, dets):
    """The detections as a detector hands them over: per image, normalised cxcywh, contiguous labels."""
    sizes = {im["id"]: (im["width"], im["height"]) for im in gt["images"]}
    out = {}
    for d in dets:
        w, h = sizes[d["image_id"]]
        x, y, bw, bh = d["bbox"]
        box = [(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h]
        out.setdefault(d["image_id"], []).append((box, d["score"], CATEGORY_IDS.index(d["category_id"])))
    return sizes, out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prism_metric_equals_pycocotools_on_pixels(seed):
    gt, dets = random_coco(seed)
    ref = pycocotools_stats(gt, dets)
    sizes, outputs = as_model_outputs(gt, dets)
    converted = []
    for image_id, rows in outputs.items():
        boxes = torch.tensor([r[0] for r in rows], dtype=torch.float64)
        converted += to_coco_detections(image_id, boxes, torch.tensor([r[1] for r in rows]),
                                        torch.tensor([r[2] for r in rows]), sizes[image_id], CATEGORY_IDS)
    got = coco_box_stats(gt, converted)
    assert 0.05 < ref["AP"] < 0.95  # a case where the metric has something to say
    for name in STAT_NAMES:
        assert got[name] == pytest.approx(ref[name], abs=1e-9), name


def test_wrong_conventions_would_be_caught():
    """Normalised boxes or contiguous ids written straight into COCO (the research code's bug) score ~0."""
    gt, dets = random_coco(0)
    ref = pycocotools_stats(gt, dets)
    sizes, outputs = as_model_outputs(gt, dets)
    raw = [{"image_id": i, "category_id": CATEGORY_IDS[r[2]], "bbox": r[0], "score": r[1]}
           for i, rows in outputs.items() for r in rows]  # normalised, not pixels
    assert coco_box_stats(gt, raw)["AP"] < 0.1 * ref["AP"]


def test_no_detections_scores_zero():
    gt, _ = random_coco(0)
    assert coco_box_stats(gt, []) == dict.fromkeys(STAT_NAMES, 0.0)
