"""Dual-circle evaluation: inner disk = object, annulus and ignore rectangles left out, beyond = background;
scores checked against scikit-learn on the scored pixels; files paired by their naming; the CLI writes the
report, from masks or from a segmenter's predictions."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score

from prism.cli.main import main
from prism.tasks.segment.dual_circle import DualCircle, load_annotations, pair_files, regions, score, stem_of

ANN = DualCircle(circles=[(20.0, 20.0, 6.0, 10.0)], ignore=[(35.0, 0.0, 40.0, 5.0)])


def disk(h, w, cx, cy, r):
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def test_annulus_and_rectangles_are_left_out_and_scores_are_scikit_learns():
    h = w = 40
    inner, scored = regions(ANN, h, w)
    assert inner.sum() == disk(h, w, 20, 20, 6).sum()
    annulus = disk(h, w, 20, 20, 10) & ~disk(h, w, 20, 20, 6)
    assert not (scored & annulus).any() and not scored[0:5, 35:40].any() and scored[39, 0]
    rng = np.random.default_rng(0)
    pred = disk(h, w, 22, 20, 8) | (rng.random((h, w)) < 0.02)
    got = score(pred, ANN)
    y, p = inner[scored], pred[scored]
    assert got["tp"] == int((p & y).sum()) and got["fp"] == int((p & ~y).sum())
    assert got["iou"] == pytest.approx(jaccard_score(y, p), abs=1e-12)
    assert got["precision"] == pytest.approx(precision_score(y, p), abs=1e-12)
    assert got["recall"] == pytest.approx(recall_score(y, p), abs=1e-12)
    assert got["f1"] == pytest.approx(f1_score(y, p), abs=1e-12)
    # a mask filling the annulus exactly is perfect: the boundary region does not count
    assert score(disk(h, w, 20, 20, 9), ANN)["iou"] == 1.0


def test_files_pair_by_their_naming(tmp_path):
    assert [stem_of(n) for n in ("a-mask.png", "a.mask.png", "a.png", "a-noCircles.jpg")] == ["a"] * 4
    for name in ("x-noCircles.jpg", "y.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    assert sorted(pair_files(tmp_path)) == ["x", "y"]
    Image.new("RGB", (8, 8)).save(tmp_path / "y-noCircles.png")
    with pytest.raises(ValueError, match="same stem 'y'"):
        pair_files(tmp_path)


def test_bad_annotations_name_the_image(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"img1": {"circles": [[1, 1, 5, 3]]}}))
    with pytest.raises(ValueError, match="'img1'.*r_inner <= r_outer"):
        load_annotations(path)


def test_the_cli_scores_a_folder_of_masks_and_renders_them(tmp_path, capsys):
    (tmp_path / "masks").mkdir()
    (tmp_path / "images").mkdir()
    for stem, shift in (("s1", 0), ("s2", 3)):
        Image.fromarray((disk(40, 40, 20 + shift, 20, 7) * 255).astype(np.uint8)).save(tmp_path / "masks" / f"{stem}-mask.png")
        Image.new("RGB", (40, 40), (90, 90, 90)).save(tmp_path / "images" / f"{stem}-noCircles.jpg")
    ann = {s: {"circles": [[20, 20, 6, 10]], "ignore": [[35, 0, 40, 5]]} for s in ("s1", "s2", "s3")}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    out = tmp_path / "out"
    assert main(["dual-circle", "--circles", str(tmp_path / "ann.json"), "--masks", str(tmp_path / "masks"),
                 "--images", str(tmp_path / "images"), "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["images"] == 2 and report["missing_masks"] == ["s3"]
    per = {r["stem"]: r for r in csv.DictReader((out / "per_image.csv").open())}
    assert float(per["s1"]["iou"]) == 1.0 and float(per["s2"]["iou"]) < 1.0
    assert report["metrics"]["image/iou"] == pytest.approx((1.0 + float(per["s2"]["iou"])) / 2)
    assert sorted(p.name for p in (out / "visualisations").iterdir()) == ["s1.png", "s2.png"]
    assert main(["dual-circle", "--circles", str(tmp_path / "ann.json"), "--out", str(out)]) == 2
    assert "give --masks" in capsys.readouterr().err


def test_a_segmenters_predictions_are_scored(tmp_path):
    import torch

    from prism.config import JobConfig
    from prism.engine.model import build_model
    from prism.inference.bundle import write_bundle
    from prism.tasks import task_class

    cfg = JobConfig.model_validate(task_class("segment").example_job())
    task = task_class("segment")(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, task)
    write_bundle(tmp_path / "seg", cfg, task, model, [n for n, p in model.named_parameters() if p.requires_grad])
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "images" / "p-noCircles.png")
    (tmp_path / "ann.json").write_text(json.dumps({"p": {"circles": [[20, 15, 5, 9]]}}))
    out = tmp_path / "out"
    assert main(["dual-circle", "--circles", str(tmp_path / "ann.json"), "--model", str(tmp_path / "seg"),
                 "--images", str(tmp_path / "images"), "--prompt", "circle", "--out", str(out)]) == 0
    mask = np.asarray(Image.open(out / "masks" / "p-mask.png")) > 0
    assert mask.shape == (30, 40)
    row = next(csv.DictReader((out / "per_image.csv").open()))
    assert float(row["iou"]) == pytest.approx(score(mask, load_annotations(tmp_path / "ann.json")["p"])["iou"])


def test_the_task_scores_dual_circles_on_the_epochs_it_is_told(tmp_path):
    import torch

    from prism.config import JobConfig
    from prism.engine.model import build_model
    from prism.tasks import task_class

    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "images" / "p-noCircles.png")
    (tmp_path / "ann.json").write_text(json.dumps({"p": {"circles": [[20, 15, 5, 9]]}}))
    raw = task_class("segment").example_job()
    raw["stages"][1]["epochs"] = 4  # 5 epochs in all
    raw["task"]["dual_circle"] = {"circles": str(tmp_path / "ann.json"), "images": str(tmp_path / "images"),
                                  "prompt": "circle", "every": 2}
    cfg = JobConfig.model_validate(raw)
    task = task_class("segment")(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, task).train()
    ran = {e: task.epoch_report(model, e) for e in range(1, 6)}
    assert [e for e, (m, _) in ran.items() if m] == [2, 4, 5]  # every 2nd, and the last
    metrics, files = ran[2]
    assert {"val/dual_circle/iou", "val/dual_circle/image/iou"} <= set(metrics)
    assert {"dual_circle/per_image.csv", "dual_circle/metrics.json", "dual_circle/visualisations/p.png"} <= set(files)
    assert model.training  # put back as it was
