"""COCO AP of a detector, gathered across workers: detections are kept per image and scored once at the end.

:func:`top_detections` turns a decoder's last layer into ranked detections as Deformable DETR does
(sigmoid scores over every (query, class) pair, the best ``k``). :class:`CocoDetectionMetrics` converts them
to COCO results in the original images' pixels and the dataset's category ids (``targets`` carry each
image's ``image_id`` and original ``size``), keeps them, and scores the union of every worker's state with
:func:`~prism.tasks.detection.coco_report.detection_report` over the images seen — so a validation split
spread over workers gives the metric of one pass over all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from prism.tasks.base import MetricAccumulator
from prism.tasks.detection.augment import canvas_to_image
from prism.tasks.detection.coco_eval import STAT_NAMES, to_coco_detections
from prism.tasks.detection.coco_report import detection_report

__all__ = ["CocoDetectionMetrics", "top_detections"]


def top_detections(logits: torch.Tensor, boxes: torch.Tensor, k: int = 100
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, Q, K) logits and (B, Q, 4) boxes → the ``k`` best (query, class) pairs per image: scores (B, k),
    labels (B, k) contiguous, boxes (B, k, 4), best first."""
    b, q, classes = logits.shape
    k = min(k, q * classes)
    scores, idx = logits.sigmoid().flatten(1).topk(k, dim=1)
    query = torch.div(idx, classes, rounding_mode="floor")
    return scores, idx % classes, boxes.gather(1, query[..., None].expand(-1, -1, 4))


class CocoDetectionMetrics(MetricAccumulator):
    """``val/AP`` … ``val/ARl`` over the images seen; ``ground_truth`` is the split's COCO dict,
    ``category_ids`` the model index → dataset id map, ``canvas`` the letterboxed input side;
    ``predictions_only``: images without annotations, kept detections and no score."""

    summable: ClassVar[bool] = False

    def __init__(self, ground_truth: dict[str, Any] | None, category_ids: Sequence[int], canvas: int, k: int = 100,
                 category_names: Sequence[str] | None = None, score_threshold: float = 0.3,
                 predictions_only: bool = False):
        self.ground_truth, self.category_ids, self.canvas, self.k = ground_truth, list(category_ids), canvas, k
        self.category_names = [str(c) for c in category_ids] if category_names is None else list(category_names)
        self.score_threshold, self.predictions_only = score_threshold, predictions_only
        self._report: tuple[tuple[int, int], dict[str, Any]] | None = None
        self.detections: list[dict[str, Any]] = []
        self.image_ids: list[int] = []
        self.gt_images: list[dict[str, Any]] = []
        self.gt_annotations: list[dict[str, Any]] = []

    def update(self, predictions: dict[str, Any], targets: list[dict[str, Any]]) -> None:
        """``targets`` carry ``image_id`` and the original ``size``; without a ``ground_truth`` dict they
        carry the ground truth too (:meth:`_add_ground_truth`)."""
        scores, labels, boxes = top_detections(predictions["logits"].float(), predictions["boxes"].float(), self.k)
        for i, t in enumerate(targets):
            size = tuple(int(v) for v in t["size"])  # original (W, H)
            image_boxes = canvas_to_image(boxes[i].double().cpu(), size, self.canvas)
            self.detections += to_coco_detections(int(t["image_id"]), image_boxes, scores[i], labels[i], size,
                                                  self.category_ids)
            self.image_ids.append(int(t["image_id"]))
            if self.ground_truth is None:
                self._add_ground_truth(t, size)

    def _add_ground_truth(self, target: dict[str, Any], size: tuple[int, int]) -> None:
        """The image's ground truth: as the COCO file gives it when the batch carries it (``gt_*``: every box
        in pixels, crowd flags, the annotations' areas), else its target boxes mapped back to pixels."""
        image_id = int(target["image_id"])
        self.gt_images.append({"id": image_id, "width": size[0], "height": size[1]})
        if "gt_boxes" in target:
            boxes = np.asarray(target["gt_boxes"], dtype=np.float64).reshape(-1, 4)
            for box, cat, crowd, area in zip(boxes, target["gt_category_id"], target["gt_iscrowd"], target["gt_area"],
                                             strict=True):
                area = float(area) if np.isfinite(area) else float(box[2] * box[3])
                self.gt_annotations.append({"image_id": image_id, "category_id": int(cat),
                                            "bbox": [float(v) for v in box], "area": area, "iscrowd": int(crowd)})
            return
        gt_boxes = canvas_to_image(torch.as_tensor(target["boxes"]).double().cpu().reshape(-1, 4), size, self.canvas)
        labels = torch.as_tensor(target["labels"]).reshape(-1)
        for d in to_coco_detections(image_id, gt_boxes, torch.ones(len(labels)), labels, size, self.category_ids):
            w, h = d["bbox"][2], d["bbox"][3]
            self.gt_annotations.append({"image_id": image_id, "category_id": d["category_id"], "bbox": d["bbox"],
                                        "area": w * h, "iscrowd": 0})

    def state(self) -> dict[str, Any]:
        return {"detections": list(self.detections), "image_ids": list(self.image_ids),
                "gt_images": list(self.gt_images), "gt_annotations": list(self.gt_annotations)}

    def merge(self, state: dict[str, Any]) -> None:
        self.detections += state["detections"]
        self.image_ids += state["image_ids"]
        self.gt_images += state["gt_images"]
        self.gt_annotations += state["gt_annotations"]

    def truth(self) -> dict[str, Any]:
        if self.ground_truth is not None:
            return self.ground_truth
        anns = [{**a, "id": i + 1} for i, a in enumerate(self.gt_annotations)]
        return {"images": self.gt_images, "annotations": anns,
                "categories": [{"id": c, "name": n} for c, n in zip(self.category_ids, self.category_names,
                                                                     strict=True)]}

    def report(self) -> dict[str, Any]:
        """:func:`~prism.tasks.detection.coco_report.detection_report` of the images seen (computed once per
        state: ``compute`` and ``export`` of one epoch share it)."""
        key = (len(self.detections), len(self.image_ids))
        if self._report is None or self._report[0] != key:
            self._report = (key, detection_report(self.truth(), self.detections, sorted(set(self.image_ids)),
                                                  self.score_threshold))
        return self._report[1]

    def compute(self, prefix: str = "val/") -> dict[str, float]:
        if self.predictions_only:  # images without annotations (test-dev): detections, nothing to score
            return {}
        if not self.image_ids:
            return {f"{prefix}{n}": float("nan") for n in STAT_NAMES}
        return {f"{prefix}{n}": v for n, v in self.report()["stats"].items()}

    def export(self) -> dict[str, Any]:
        """The report (per-class AP, PR curves, confidence of TP / FP, class counts), JSON-able; {} when no
        image was seen."""
        return self.report() if self.image_ids and not self.predictions_only else {}
