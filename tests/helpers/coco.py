"""Random COCO ground truth and detections (non-contiguous category ids, crowd boxes, every size range, an
image without objects), and pycocotools' own statistics of them: the reference of the detection metrics."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np

__all__ = ["CATEGORY_IDS", "pycocotools_stats", "random_coco"]

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
    from prism.tasks.detection.coco_eval import STAT_NAMES

    return dict(zip(STAT_NAMES, ev.stats, strict=True))
