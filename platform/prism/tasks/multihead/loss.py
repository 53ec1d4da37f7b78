"""Masked multi-head cross-entropy with label smoothing and optional class weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prism.tasks.multihead.config import MultiHeadTaskConfig
from prism.tasks.multihead.labels import IGNORE

__all__ = ["multihead_loss"]


def multihead_loss(cfg: MultiHeadTaskConfig, logits: dict[str, torch.Tensor],
                   targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over heads of the mean cross-entropy over rows whose target is not ``IGNORE``.

    ``logits[h]`` is ``(B, K_h)``; ``targets["y_<h>"]`` is ``(B,)`` int64 with ``-1`` where the head is
    undefined (missing label or failed ``only_when``). A head with no defined row in the batch adds zero
    (with a graph, so DDP sees every parameter used).
    """
    total = None
    parts: dict[str, float] = {}
    for h in cfg.heads:
        z = logits[h.name].float()
        y = targets[f"y_{h.name}"]
        valid = y != IGNORE
        weight = None
        if h.class_weights is not None:
            weight = torch.tensor(h.class_weights, dtype=z.dtype, device=z.device)
        if bool(valid.any()):
            loss_h = F.cross_entropy(z[valid], y[valid], weight=weight, label_smoothing=cfg.label_smoothing)
        else:
            loss_h = z.sum() * 0.0
        parts[f"loss/{h.name}"] = float(loss_h.detach())
        total = loss_h if total is None else total + loss_h
    assert total is not None
    return total, parts
