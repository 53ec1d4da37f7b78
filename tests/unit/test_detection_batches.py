"""COCO rows → detection batches → the train loop's ragged targets, without Ray: real ids become model
indices, crowd boxes leave the targets, boxes follow the letterbox, an undecodable image is named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prism.data.coco import read_coco
from prism.data.synth.shapes import generate_shapes
from prism.data.table import BadRowsError
from prism.tasks.detection.batches import DecodeDetection, DetectionCollate


def rows_batch(table, n):
    rows = table.rows.iloc[:n]
    return {k: rows[k].to_numpy() for k in ("path", "image_id", "width", "height", "boxes", "category_id", "iscrowd",
                                            "area")}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = generate_shapes(tmp_path_factory.mktemp("shapes"), n=8, size=80, seed=1, progress=False)
    return read_coco(out / "instances.json")


def test_rows_become_batches_and_ragged_targets(shapes):
    batch = DecodeDetection(64, shapes.category_ids)(rows_batch(shapes, 4))
    assert batch["image"].shape == (4, 64, 64, 3) and batch["size"].tolist() == [[80, 80]] * 4
    inputs, targets = DetectionCollate()(batch)
    assert inputs["image"].dtype == torch.uint8 and len(targets) == 4
    for t, row in zip(targets, shapes.rows.itertuples(), strict=False):
        assert t["image_id"] == row.image_id and len(t["labels"]) == len(row.category_id)
        assert t["labels"].tolist() == [shapes.category_ids.index(int(c)) for c in row.category_id]
        want = torch.tensor(row.boxes, dtype=torch.float32).reshape(-1, 4)
        cxcywh = torch.cat([want[:, :2] + want[:, 2:] / 2, want[:, 2:]], 1) / 80  # square: letterbox = resize
        torch.testing.assert_close(t["boxes"], cxcywh, atol=1e-5, rtol=0)


def test_crowd_boxes_leave_the_training_targets(shapes):
    batch = rows_batch(shapes, 1)
    n = len(batch["category_id"][0])
    crowd = np.zeros(n, dtype=bool)
    crowd[0] = True
    batch["iscrowd"] = np.empty(1, dtype=object)
    batch["iscrowd"][0] = crowd
    _, (target,) = DetectionCollate()(DecodeDetection(64, shapes.category_ids)(batch))
    assert len(target["labels"]) == n - 1


def test_an_undecodable_image_is_named_by_its_id(shapes, tmp_path):
    batch = rows_batch(shapes, 1)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    batch["path"] = np.array([str(bad)], dtype=object)
    with pytest.raises(BadRowsError, match=f"image id {int(batch['image_id'][0])}: cannot decode"):
        DecodeDetection(64, shapes.category_ids)(batch)


def test_validation_batches_carry_the_files_ground_truth_and_the_metric_scores_it(shapes):
    """Validation targets hold every box as the file gives it (a crowd box and a box too small for the
    letterbox included, the annotation's area kept), and the loop's metric over them equals pycocotools
    on the COCO file itself."""
    from prism.tasks.detection.metrics import CocoDetectionMetrics
    from tests.helpers.coco import pycocotools_stats

    rows = shapes.rows.iloc[:4].copy()
    rows.at[0, "iscrowd"] = np.array([True] + [False] * (len(rows.at[0, "boxes"]) - 1))
    rows.at[1, "boxes"] = np.concatenate([rows.at[1, "boxes"], [[3.0, 3.0, 0.5, 0.5]]]).astype(np.float32)
    rows.at[1, "category_id"] = np.append(rows.at[1, "category_id"], shapes.category_ids[0])
    rows.at[1, "iscrowd"] = np.append(rows.at[1, "iscrowd"], False)
    rows.at[1, "area"] = np.append(rows.at[1, "area"], 0.2)
    table = type(shapes)(rows.reset_index(drop=True), shapes.categories)
    batch = {k: table.rows[k].to_numpy() for k in ("path", "image_id", "width", "height", "boxes", "category_id",
                                                  "iscrowd", "area")}
    _, targets = DetectionCollate()(DecodeDetection(32, shapes.category_ids, train=False)(batch))
    assert len(targets[1]["gt_boxes"]) == len(rows.at[1, "boxes"]) == len(targets[1]["labels"]) + 1  # the tiny one
    assert targets[0]["gt_iscrowd"][0] and targets[1]["gt_area"][-1] == pytest.approx(0.2)
    gt = table.ground_truth()
    rng = np.random.default_rng(0)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": float(rng.random()),
             "bbox": [v + float(rng.normal(0, 1)) for v in a["bbox"]]} for a in gt["annotations"]]
    acc = CocoDetectionMetrics(None, shapes.category_ids, 32)
    for t in targets:
        acc._add_ground_truth(t, t["size"])
        acc.image_ids.append(t["image_id"])
    acc.detections = dets
    ref = pycocotools_stats(gt, dets)
    got = acc.compute(prefix="")
    for name in ("AP", "AP50", "APs", "AR100"):
        assert got[name] == pytest.approx(ref[name], abs=1e-9), name
    train_batch = DecodeDetection(32, shapes.category_ids, train=True)(batch)
    assert not any(k.startswith("gt_") for k in train_batch)
