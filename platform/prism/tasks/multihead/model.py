"""Backbone + one classification head per configured head."""

from __future__ import annotations

import torch
from torch import nn

from prism.tasks.multihead.config import MultiHeadTaskConfig

__all__ = ["MultiHeadClassifier", "build_heads"]


def build_heads(cfg: MultiHeadTaskConfig, embed_dim: int) -> nn.ModuleDict:
    """``{head: Linear(in, K)}`` or a one-hidden-layer MLP when ``cfg.hidden_dim`` is set."""
    in_dim = embed_dim * (2 if cfg.pooling == "cls+mean" else 1)
    heads = nn.ModuleDict()
    for h in cfg.heads:
        if cfg.hidden_dim:
            heads[h.name] = nn.Sequential(
                nn.LayerNorm(in_dim), nn.Linear(in_dim, cfg.hidden_dim), nn.GELU(),
                nn.Linear(cfg.hidden_dim, len(h.classes)),
            )
        else:
            heads[h.name] = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, len(h.classes)))
    for m in heads.modules():
        if isinstance(m, nn.Linear):  # small init, as timm does for classifier heads: starts near uniform
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return heads


class MultiHeadClassifier(nn.Module):
    """Image → logits per head.

    ``forward(x)`` takes ``x`` of shape ``(B, 3, H, W)`` (normalised float) and returns
    ``{head_name: logits (B, K_head)}``. The head input is the backbone's cls token ``(B, C)``, or cls
    concatenated with the mean patch token ``(B, 2C)`` for ``pooling: cls+mean``.
    """

    def __init__(self, backbone: nn.Module, heads: nn.ModuleDict, pooling: str = "cls+mean"):
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.pooling = pooling

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → pooled features ``(B, C)`` or ``(B, 2C)``."""
        out = self.backbone(x)
        if self.pooling == "cls":
            return out["cls"]
        return torch.cat([out["cls"], out["patches"].mean(dim=(1, 2))], dim=-1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {name: head(f) for name, head in self.heads.items()}
