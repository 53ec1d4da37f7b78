"""``prism evaluate`` of a detector, without Ray: the generic evaluation loop over a COCO file scores what
pycocotools scores on the detections it writes; a "mini" evaluation takes the first N images; a test-dev
file (no annotations) gives detections only; the report folder holds the figures, tables, drawn samples
and report.md; category ids that are not the model's are refused."""

from __future__ import annotations

import json

import pytest
import torch

from prism.config import JobConfig
from prism.data.synth.shapes import generate_shapes
from prism.engine.model import build_model
from prism.inference.evaluate import evaluate
from prism.inference.predictor import Predictor
from prism.tasks import build_task
from prism.tasks.detection.coco_eval import STAT_NAMES
from prism.tasks.detection.evaluation import select_coco_rows, write_detection_outputs
from tests.helpers.coco import pycocotools_stats


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("shapes"), n=24, size=48, seed=1, progress=False) / "instances.json"


@pytest.fixture(scope="module")
def predictor(shapes):
    cfg = JobConfig.model_validate({
        "task": {"name": "detection", "decoder": {"preset": "lightweight", "dim": 32, "ffn": 64, "queries": 8},
                 "max_detections": 20},
        "backbone": {"name": "dinov2_tiny", "img_size": 28},
        "stages": [{"kind": "probe", "epochs": 1, "lr": {"head": 1e-3}}],
        "data": {"source": "coco", "coco": {"train": str(shapes)}, "val_fraction": 0.5}})
    task = build_task(cfg)
    torch.manual_seed(0)
    return Predictor(cfg, task, build_model(cfg, task).eval(), "cpu")


def test_a_coco_file_is_scored_as_pycocotools_scores_its_detections(predictor, shapes, tmp_path):
    rows = select_coco_rows(predictor, shapes)
    report = evaluate(predictor, rows=rows, batch_size=5, progress=False)
    assert report.n_images == 24 and set(report.metrics) == set(STAT_NAMES)
    written = report.save(tmp_path, predictor.task) + write_detection_outputs(report, tmp_path, samples=3)
    detections = json.loads((tmp_path / "detections.json").read_text())
    assert len(detections) == 24 * 20 and {d["image_id"] for d in detections} == set(rows.rows["image_id"])
    gt = json.loads(shapes.read_text())
    ref = pycocotools_stats(gt, detections)
    for name in STAT_NAMES:
        assert report.metrics[name] == pytest.approx(ref[name], abs=1e-9), name
    names = {p.relative_to(tmp_path).as_posix() for p in written}
    assert {"metrics.json", "pr_curves.png", "class_ap.png", "confidence.png", "class_counts.png",
            "per_class.csv", "detections.json"} <= names
    assert sorted(n for n in names if n.startswith("samples/")) == sorted(
        f"samples/{i}.png" for i in list(rows.rows["image_id"])[:3])
    summary = report.write_summary(tmp_path, "an untrained detector", written).read_text()
    assert "| AP50 |" in summary and "![pr_curves](pr_curves.png)" in summary and "samples/" in summary
    stats = json.loads((tmp_path / "metrics.json").read_text())
    assert [c["category_id"] for c in stats["per_class"]] == [1, 4, 7]


def test_first_n_images_and_the_validation_split(predictor, shapes):
    rows = select_coco_rows(predictor, shapes, first=5)
    first_ids = sorted(im["id"] for im in json.loads(shapes.read_text())["images"])[:5]
    assert list(rows.rows["image_id"]) == first_ids
    assert len(rows.rows) == 5 and rows.scored["first"] == 5
    from prism.data.coco_datasets import coco_split

    _, val = coco_split(predictor.cfg)
    split = select_coco_rows(predictor)
    assert list(split.rows["image_id"]) == list(val.rows["image_id"]) and split.scored["rows"] == "validation split"


def test_test_dev_file_gives_detections_only(predictor, shapes, tmp_path):
    data = json.loads(shapes.read_text())
    del data["annotations"]
    info = shapes.parent / "image_info_test.json"
    info.write_text(json.dumps(data))
    report = evaluate(predictor, rows=select_coco_rows(predictor, info, first=4), progress=False)
    assert report.metrics == {} and report.stats == {}
    write_detection_outputs(report, tmp_path, samples=0)
    assert {d["image_id"] for d in json.loads((tmp_path / "detections.json").read_text())} == {
        im["id"] for im in sorted(data["images"], key=lambda i: i["id"])[:4]}


def test_other_category_ids_are_refused(predictor, shapes, tmp_path):
    data = json.loads(shapes.read_text())
    data["categories"] = [{"id": 2, "name": "x"}]
    data["annotations"] = []
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"category ids \[2\].*\[1, 4, 7\]"):
        select_coco_rows(predictor, other)


def test_samples_show_detections_past_the_threshold_or_the_best_few():
    from prism.tasks.detection.evaluation import _shown

    dets = [{"score": s} for s in (0.2, 0.9, 0.05, 0.6)]
    assert [d["score"] for d in _shown(dets, 2, 0.5)] == [0.9, 0.6]
    assert [d["score"] for d in _shown(dets, 3, 0.5)] == [0.9, 0.6, 0.2]  # fewer pass than there are boxes
    assert _shown(dets, 0, 0.95) == [] and [d["score"] for d in _shown(dets, 1, 0.95)] == [0.9]
    assert _shown([], 2, 0.5) == []
