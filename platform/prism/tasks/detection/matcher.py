"""Hungarian matching of DETR queries to ground-truth boxes (``scipy.optimize.linear_sum_assignment``).

Costs per (query, target), as Deformable DETR weighs them::

    class  focal:  α (1 − p)^γ (−log p) − (1 − α) p^γ (−log(1 − p))   at the target's class (p = sigmoid)
    bbox   L1 of normalised (cx, cy, w, h)
    giou   −GIoU of the boxes as (x1, y1, x2, y2)   (torchvision.ops.generalized_box_iou)

    C = w_class · class + w_bbox · bbox + w_giou · giou

The batch's costs are computed in one pass against all of its targets (B·Q, ΣT) and each image's block is
assigned alone, which gives exactly the per-image matching; an image without targets matches nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou

__all__ = ["HungarianMatcher", "focal_class_cost"]


def focal_class_cost(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
                     ) -> torch.Tensor:
    """(N, K) logits, (T,) contiguous class indices → (N, T) focal matching cost."""
    p = logits.sigmoid()
    neg = (1 - alpha) * p.pow(gamma) * -(1 - p + 1e-8).log()
    pos = alpha * (1 - p).pow(gamma) * -(p + 1e-8).log()
    return pos[:, labels] - neg[:, labels]


@dataclass
class HungarianMatcher:
    """Cost weights (config ``task.loss``); ``__call__`` returns per image ``(query indices, target
    indices)`` as int64 tensors of equal length min(Q, T)."""

    class_weight: float = 2.0
    bbox_weight: float = 5.0
    giou_weight: float = 2.0
    alpha: float = 0.25
    gamma: float = 2.0

    def cost(self, logits: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, target_boxes: torch.Tensor
             ) -> torch.Tensor:
        """(N, K) logits, (N, 4) predicted cxcywh, (T,) labels, (T, 4) target cxcywh → (N, T) cost."""
        c_class = focal_class_cost(logits, labels, self.alpha, self.gamma)
        c_bbox = torch.cdist(boxes, target_boxes, p=1)
        c_giou = -generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy"))
        return self.class_weight * c_class + self.bbox_weight * c_bbox + self.giou_weight * c_giou

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict[str, torch.Tensor]]
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``logits`` (B, Q, K), ``boxes`` (B, Q, 4) normalised cxcywh, ``targets`` B dicts of ``labels`` (T,)
        and ``boxes`` (T, 4) normalised cxcywh."""
        b, q = logits.shape[:2]
        sizes = [len(t["labels"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in range(b)]
        labels = torch.cat([t["labels"] for t in targets])
        target_boxes = torch.cat([t["boxes"] for t in targets]).to(boxes.dtype)
        cost = self.cost(logits.flatten(0, 1).float(), boxes.flatten(0, 1).float(), labels, target_boxes.float())
        cost = cost.view(b, q, -1).cpu()
        out = []
        for i, block in enumerate(cost.split(sizes, dim=-1)):
            if sizes[i] == 0:
                out.append((empty, empty))
                continue
            rows, cols = linear_sum_assignment(block[i].numpy())
            out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return out
