"""Cross-entropy with label smoothing and per-class weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prism.tasks.classify.config import ClassifyTaskConfig

__all__ = ["classify_loss"]


def classify_loss(cfg: ClassifyTaskConfig, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits (B, K)`` against ``y`` int64 ``(B,)`` (weighted as torch weights:
    the sum of weighted losses over the sum of the targets' weights)."""
    z = logits.float()
    weights = cfg.weight_vector()
    weight = None if weights is None else torch.tensor(weights, dtype=z.dtype, device=z.device)
    return F.cross_entropy(z, y, weight=weight, label_smoothing=cfg.label_smoothing)
