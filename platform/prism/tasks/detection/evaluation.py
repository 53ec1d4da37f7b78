"""What ``prism evaluate`` scores for a detection model, and what it writes beside the metrics.

:func:`select_coco_rows` picks the images, as :class:`~prism.inference.evaluate.EvalRows` for the generic
evaluation loop (the task's collate class, :func:`~prism.engine.predict.predict_batch`, the metric):

- no COCO file given: the **validation split** of the model's own training data (``data.coco.*`` of its
  config: ``data.coco.val``, or the id-hash split of the training file; ``val_subset`` kept);
- ``coco``: every image of that ``instances_*.json`` (images under ``images``, default the JSON's folder);
  a file without annotations (COCO test-dev's ``image_info_*.json``) gives predictions only;
- ``first``: only the first N of them (a "mini" evaluation).

Scores are COCO's on the file's own ground truth (crowd boxes as "ignore", the annotations' areas), in
original pixels with the dataset's category ids. :func:`write_detection_outputs` adds ``detections.json``
(COCO results, the format COCO's evaluation server takes) and ``samples/<image_id>.png`` (ground truth in
green, detections coloured by class with their scores: those past the score threshold, or the image's best
few where fewer pass than it has boxes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prism.data.coco import CocoTable, read_coco
from prism.tasks.detection.coco_report import COUNT_THRESHOLD
from prism.tasks.detection.metrics import CocoDetectionMetrics

if TYPE_CHECKING:
    from prism.inference.evaluate import EvalReport, EvalRows
    from prism.inference.predictor import Predictor

__all__ = ["select_coco_rows", "write_detection_outputs"]


def _empty(n: int) -> np.ndarray:
    """``n`` empty ragged entries: the batch's ``boxes`` / ``labels``, unused when the metric holds the
    ground truth."""
    out = np.empty(n, dtype=object)
    for i in range(n):
        out[i] = np.zeros(0, dtype=np.float32)
    return out


def select_coco_rows(predictor: Predictor, coco: Path | None = None, images: Path | None = None,
                     first: int | None = None, on_bad: str | None = None) -> EvalRows:
    """The images to score (see the module docstring) with their batch columns and metric."""
    from prism.data.coco_datasets import coco_split
    from prism.inference.evaluate import EvalRows

    cfg, task = predictor.cfg, predictor.task
    if first is not None and first < 1:
        raise ValueError(f"--first {first}: give a number of images >= 1")
    if coco is None:
        if images is not None or on_bad is not None:
            raise ValueError("--images and --on-bad-rows go with --coco; without it the validation split is read "
                             "as training read it (the model config's data.coco.*)")
        _, table = coco_split(cfg)
        c = cfg.data.coco
        source = str(c.val or c.train or "synthetic shapes (data.synthetic)")
        scored: dict[str, Any] = {"rows": "validation split", "coco": source}
    else:
        table = read_coco(coco, images, on_bad=on_bad or "error", require_annotations=False)
        if table.category_ids != task.category_ids:
            raise ValueError(f"{coco} has the category ids {table.category_ids}; the model detects "
                             f"{task.category_ids} (its task.categories)")
        scored = {"rows": "COCO file", "coco": str(Path(coco).resolve()),
                  "images": str(Path(images).resolve()) if images is not None else None}
    if first is not None:
        table = CocoTable(table.rows.iloc[:first].reset_index(drop=True), table.categories, table.skipped,
                          table.annotated)
    rows = table.rows
    if len(rows) == 0:
        raise ValueError(f"no images to score in {scored['coco']}")
    n = len(rows)
    columns = {"image_id": rows["image_id"].to_numpy(np.int64),
               "size": np.stack([rows["width"].to_numpy(np.int64), rows["height"].to_numpy(np.int64)], 1),
               "boxes": _empty(n), "labels": _empty(n)}
    metric = CocoDetectionMetrics(table.ground_truth(), task.category_ids, task.img_size, task.tcfg.max_detections,
                                  [c["name"] for c in task.categories], task.tcfg.score_threshold or COUNT_THRESHOLD,
                                  predictions_only=not table.annotated)
    boxes = sum(len(b) for b in rows["boxes"])
    what = f"{scored['rows']}: {n} images of {scored['coco']}" + (f" (the first {first})" if first else "")
    what += f", {boxes} boxes" if table.annotated else ", no annotations: predictions only"
    scored.update(n_images=n, first=first, annotated=table.annotated, boxes=boxes, describe=what)
    return EvalRows(rows[["path", "image_id"]], len(table.skipped), scored, columns, metric)


def _shown(detections: list[dict[str, Any]], n_truth: int, threshold: float) -> list[dict[str, Any]]:
    """The detections drawn on a sample: those scoring ≥ ``threshold``, or, where fewer pass than the image
    has ground-truth boxes, its best ``n_truth`` (so a weak model still shows where it looks)."""
    best = sorted(detections, key=lambda d: -d["score"])
    passed = [d for d in best if d["score"] >= threshold]
    return passed if len(passed) >= n_truth else best[:n_truth]


def write_detection_outputs(report: EvalReport, out_dir: Path, samples: int = 8) -> list[Path]:
    """``detections.json`` (every kept detection, COCO results) and up to ``samples`` drawn images."""
    from PIL import Image

    from prism.tasks.detection.figures import draw_detections

    acc: CocoDetectionMetrics = report.accumulator
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "detections.json"]
    written[0].write_text(json.dumps(acc.detections))
    gt = acc.truth()
    names = {c["id"]: c["name"] for c in gt["categories"]}
    per_image: dict[int, list[dict[str, Any]]] = {}
    for a in gt["annotations"]:
        per_image.setdefault(int(a["image_id"]), []).append(a)
    ranked: dict[int, list[dict[str, Any]]] = {}
    for d in acc.detections:
        ranked.setdefault(int(d["image_id"]), []).append(d)
    if samples > 0:
        (out_dir / "samples").mkdir(exist_ok=True)
    for path, image_id in list(zip(report.paths, acc.image_ids, strict=True))[:samples]:
        with Image.open(path) as img:
            drawn = draw_detections(img, _shown(ranked.get(image_id, []), len(per_image.get(image_id, [])),
                                                acc.score_threshold), per_image.get(image_id, []), names)
        target = out_dir / "samples" / f"{image_id}.png"
        drawn.save(target)
        written.append(target)
    return written
