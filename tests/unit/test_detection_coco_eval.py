"""Prism's COCO box metric equals pycocotools run directly: random ground truth (non-contiguous category
ids, crowd boxes, all three size ranges, an image without objects) and random detections, scored once in
pixels through pycocotools and once as the model would hand them over (normalised cxcywh in a resized
image, contiguous labels) through Prism's conversion and faster-coco-eval."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
import torch

from prism.tasks.detection.coco_eval import STAT_NAMES, coco_box_stats, to_coco_detections

CATEGORY_IDS = [1, 3, 7, 90]


def random_coco(seed: int, n_images: int = 12):
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(n_images):
        w, h = int(rng.integers(200, 640)), int(rng.integers(200, 640))
        images.append({"id": 100 + i, "width": w, "height": h, "file_name": f"{i}.jpg"})
        n = 0 if i == 3 else int(rng.integers(1, 7))
        for _ in range(n):
            bw, bh = float(rng.uniform(5, w / 2)), float(rng.uniform(5, h / 2))
            x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": int(rng.choice(CATEGORY_IDS)),
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": int(rng.random() < 0.1)})
            if rng.random() < 0.8:  # a noisy detection of it
                jit = rng.normal(0, 0.1, 4) * [bw, bh, bw, bh]
                dets.append({"image_id": 100 + i, "category_id": anns[-1]["category_id"] if rng.random() < 0.8
                             else int(rng.choice(CATEGORY_IDS)),
                             "bbox": [x + jit[0], y + jit[1], max(1.0, bw + jit[2]), max(1.0, bh + jit[3])],
                             "score": float(rng.random())})
        for _ in range(int(rng.integers(0, 4))):  # false positives
            bw, bh = float(rng.uniform(5, w / 3)), float(rng.uniform(5, h / 3))
            dets.append({"image_id": 100 + i, "category_id": int(rng.choice(CATEGORY_IDS)),
                         "bbox": [float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh)), bw, bh],
                         "score": float(rng.random())})
    gt = {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS]}
    return gt, dets


def pycocotools_stats(gt, dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return dict(zip(STAT_NAMES, ev.stats, strict=True))


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
