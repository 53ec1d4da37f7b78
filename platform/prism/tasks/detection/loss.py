"""The set loss of a DETR decoder: Hungarian-matched focal classification + L1 + GIoU, on every layer.

For each decoder layer's ``{"logits": (B, Q, K), "boxes": (B, Q, 4)}`` (the last layer and the auxiliary
ones alike) the queries are matched to the targets (:class:`~prism.tasks.detection.matcher.HungarianMatcher`);
then

    focal   sigmoid focal loss of every query against its matched class (one-hot), or none (all zeros)
    l1      |box − target| of matched queries, normalised cxcywh
    giou    1 − GIoU of matched queries

each summed and divided by the number of target boxes in the whole batch **across all workers** (summed
by an all-reduce, at least 1), so every worker's gradient has the same scale whatever its share of boxes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from prism.tasks.detection.matcher import HungarianMatcher

__all__ = ["SetCriterion"]


@dataclass
class SetCriterion:
    """Weights of the three terms (the matcher's cost weights are separate, as in Deformable DETR)."""

    matcher: HungarianMatcher = field(default_factory=HungarianMatcher)
    class_weight: float = 2.0
    bbox_weight: float = 5.0
    giou_weight: float = 2.0
    alpha: float = 0.25
    gamma: float = 2.0

    def num_boxes(self, targets: list[dict[str, torch.Tensor]], device: torch.device) -> torch.Tensor:
        from prism.runtime.distributed import all_reduce_sum

        n = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        return all_reduce_sum(n).clamp(min=1.0)

    def layer_loss(self, out: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]],
                   num_boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, boxes = out["logits"], out["boxes"]
        indices = self.matcher(logits, boxes, targets)
        onehot = torch.zeros_like(logits)
        matched_pred, matched_tgt = [], []
        for i, (q, t) in enumerate(indices):
            q, t = q.to(logits.device), t.to(logits.device)
            onehot[i, q, targets[i]["labels"][t]] = 1.0
            matched_pred.append(boxes[i, q])
            matched_tgt.append(targets[i]["boxes"][t].to(boxes.dtype))
        focal = sigmoid_focal_loss(logits, onehot, alpha=self.alpha, gamma=self.gamma, reduction="sum")
        pred, tgt = torch.cat(matched_pred), torch.cat(matched_tgt)
        l1 = (pred - tgt).abs().sum()
        giou = (1 - torch.diag(generalized_box_iou(box_convert(pred, "cxcywh", "xyxy"),
                                                   box_convert(tgt, "cxcywh", "xyxy")))).sum() if len(pred) else l1 * 0
        n = num_boxes[0]
        return {"focal": focal / n, "l1": l1 / n, "giou": giou / n}

    def __call__(self, outputs: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """Every layer's outputs (last = the prediction) → (scalar loss, parts for logging)."""
        num_boxes = self.num_boxes(targets, outputs[-1]["logits"].device)
        total = outputs[-1]["logits"].new_zeros(())
        parts: dict[str, float] = {}
        for i, out in enumerate(outputs):
            terms = self.layer_loss(out, targets, num_boxes)
            layer = (self.class_weight * terms["focal"] + self.bbox_weight * terms["l1"]
                     + self.giou_weight * terms["giou"])
            total = total + layer
            tag = "" if i == len(outputs) - 1 else f"/aux{i}"
            parts.update({f"loss/{k}{tag}": float(v.detach()) for k, v in terms.items()})
        return total, parts
