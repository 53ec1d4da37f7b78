"""COCO AP of a detector, gathered across workers: detections are kept per image and scored once at the end.

:func:`top_detections` turns a decoder's last layer into ranked detections as Deformable DETR does
(sigmoid scores over every (query, class) pair, the best ``k``). :class:`CocoDetectionMetrics` converts them
to COCO results in the original images' pixels and the dataset's category ids (``targets`` carry each
image's ``image_id`` and original ``size``), keeps them, and scores the union of every worker's state with
:func:`~prism.tasks.detection.coco_eval.coco_box_stats` over the images seen — so a validation split
spread over workers gives the metric of one pass over all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from prism.tasks.base import MetricAccumulator
from prism.tasks.detection.augment import canvas_to_image
from prism.tasks.detection.coco_eval import STAT_NAMES, coco_box_stats, to_coco_detections

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
    ``category_ids`` the model index → dataset id map, ``canvas`` the letterboxed input side."""

    summable: ClassVar[bool] = False

    def __init__(self, ground_truth: dict[str, Any], category_ids: Sequence[int], canvas: int, k: int = 100):
        self.ground_truth, self.category_ids, self.canvas, self.k = ground_truth, list(category_ids), canvas, k
        self.detections: list[dict[str, Any]] = []
        self.image_ids: list[int] = []

    def update(self, predictions: dict[str, Any], targets: list[dict[str, Any]]) -> None:
        scores, labels, boxes = top_detections(predictions["logits"].float(), predictions["boxes"].float(), self.k)
        for i, t in enumerate(targets):
            size = tuple(int(v) for v in t["size"])  # original (W, H)
            image_boxes = canvas_to_image(boxes[i].double().cpu(), size, self.canvas)
            self.detections += to_coco_detections(int(t["image_id"]), image_boxes, scores[i], labels[i], size,
                                                  self.category_ids)
            self.image_ids.append(int(t["image_id"]))

    def state(self) -> dict[str, Any]:
        return {"detections": list(self.detections), "image_ids": list(self.image_ids)}

    def merge(self, state: dict[str, Any]) -> None:
        self.detections += state["detections"]
        self.image_ids += state["image_ids"]

    def compute(self, prefix: str = "val/") -> dict[str, float]:
        if not self.image_ids:
            return {f"{prefix}{n}": float("nan") for n in STAT_NAMES}
        stats = coco_box_stats(self.ground_truth, self.detections, sorted(set(self.image_ids)))
        return {f"{prefix}{n}": v for n, v in stats.items()}
