"""The detection report beyond COCO's 12 numbers, against pycocotools: per-class AP is pycocotools run on
that class alone, the classes' mean is AP, the PR curve at IoU 0.5 averages to AP50, true / false positives
split at IoU 0.5, class counts leave crowd boxes out; its figures and the task's tables render from it."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest

from prism.tasks.detection.coco_report import detection_report
from tests.helpers.coco import CATEGORY_IDS, random_coco


def pycocotools_class_ap(gt, dets, category_id):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        ev.params.catIds = [category_id]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[0], ev.stats[1]


@pytest.mark.parametrize("seed", [0, 1])
def test_per_class_ap_is_pycocotools_on_that_class(seed):
    gt, dets = random_coco(seed, n_images=20)
    report = detection_report(gt, dets)
    assert [c["category_id"] for c in report["per_class"]] == CATEGORY_IDS
    for c in report["per_class"]:
        ap, ap50 = pycocotools_class_ap(gt, dets, c["category_id"])
        assert c["AP"] == pytest.approx(ap, abs=1e-9), c
        assert c["AP50"] == pytest.approx(ap50, abs=1e-9), c
    valid = [c["AP"] for c in report["per_class"] if c["AP"] is not None]
    assert np.mean(valid) == pytest.approx(report["stats"]["AP"], abs=1e-9)
    curve = np.array(report["pr"]["iou50"]["all"], dtype=float)
    assert np.mean(curve) == pytest.approx(report["stats"]["AP50"], abs=1e-9)


def one_image(det_boxes, scores=None):
    gt = {"images": [{"id": 1, "width": 100, "height": 100}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 40, 40], "area": 1600,
                           "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 5, "bbox": [60, 60, 30, 30], "area": 900,
                           "iscrowd": 1}],
          "categories": [{"id": 5, "name": "thing"}, {"id": 9, "name": "other"}]}
    scores = scores or [0.9] * len(det_boxes)
    return gt, [{"image_id": 1, "category_id": 5, "bbox": b, "score": s} for b, s in zip(det_boxes, scores, strict=True)]


def test_true_and_false_positives_split_at_iou_one_half():
    # IoU of [10, 10, 40, 40] with [10, 10, 40, w]: w / 40 → 0.55 and 0.45
    for width, tp in ((22.0, 1), (18.0, 0)):
        gt, dets = one_image([[10, 10, 40, width]], [0.87])
        conf = detection_report(gt, dets)["confidence"]
        assert sum(conf["tp"]) == tp and sum(conf["fp"]) == 1 - tp
        assert (conf["tp"] if tp else conf["fp"])[17] == 1  # 0.87 falls in the bin [0.85, 0.9)


def test_class_counts_leave_crowd_out_and_count_from_the_threshold():
    gt, dets = one_image([[10, 10, 40, 40], [0, 0, 10, 10], [50, 0, 10, 10]], [0.9, 0.5, 0.1])
    report = detection_report(gt, dets, score_threshold=0.4)
    thing, other = report["per_class"]
    assert (thing["ground_truth"], thing["predicted"]) == (1, 2)
    assert (other["ground_truth"], other["predicted"], other["AP"]) == (0, 0, None)
    assert report["n_detections"] == 3 and report["n_images"] == 1


def test_no_detections_give_zeros_and_still_draw():
    from prism.tasks.detection.figures import (
        class_ap_figure,
        class_counts_figure,
        confidence_figure,
        pr_figure,
    )

    gt, _ = one_image([])
    report = detection_report(gt, [])
    assert report["stats"]["AP"] == 0.0 and report["per_class"][0]["ground_truth"] == 1
    for fig in (class_ap_figure(report), class_counts_figure(report), confidence_figure(report), pr_figure(report)):
        assert fig.axes


def test_task_figures_and_tables_from_a_report(tmp_path):
    from prism.config import JobConfig
    from prism.tasks import build_task, task_class

    gt, dets = random_coco(0, n_images=10)
    report = detection_report(gt, dets)
    job = task_class("detection").example_job()
    job["task"]["categories"] = gt["categories"]
    task = build_task(JobConfig.model_validate(job))
    figs = task.figures(report)
    assert set(figs) == {"pr_curves.png", "class_ap.png", "confidence.png", "class_counts.png"}
    pr_axes = figs["pr_curves.png"].axes
    assert len(pr_axes[0].lines) == len(CATEGORY_IDS) + 1  # every class and the mean
    for name, fig in figs.items():
        fig.savefig(tmp_path / name)
        assert (tmp_path / name).stat().st_size > 1000
    table = task.tables(report)["per_class.csv"]
    assert list(table["category_id"]) == CATEGORY_IDS and {"AP", "AP50", "ground_truth"} <= set(table.columns)
    assert task.figures({}) == {} and task.tables({}) == {}
