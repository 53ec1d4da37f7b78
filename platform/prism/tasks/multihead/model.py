"""The multi-head classifier's heads: one classifier per configured head over pooled backbone features."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prism.tasks.multihead.config import MultiHeadTaskConfig

__all__ = ["MultiHeadHeads", "build_heads"]


class MultiHeadHeads(nn.ModuleDict):
    """``{head: classifier}``; ``forward(features, inputs)`` → ``{head: logits (B, K_head)}``.

    The classifier input is the backbone's cls token ``(B, C)``, or cls concatenated with the mean patch
    token ``(B, 2C)`` for ``pooling: cls+mean``. A ``ModuleDict`` so parameter names stay
    ``heads.<head>.<i>.weight`` (what bundles hold).
    """

    def __init__(self, heads: dict[str, nn.Module], pooling: str = "cls+mean"):
        super().__init__(heads)
        self.pooling = pooling

    def pool(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Backbone features → ``(B, C)`` or ``(B, 2C)``."""
        if self.pooling == "cls":
            return features["cls"]
        return torch.cat([features["cls"], features["patches"].mean(dim=(1, 2))], dim=-1)

    def forward(self, features: dict[str, torch.Tensor], inputs: dict[str, Any] | None = None
                ) -> dict[str, torch.Tensor]:
        f = self.pool(features)
        return {name: head(f) for name, head in self.items()}


def build_heads(cfg: MultiHeadTaskConfig, embed_dim: int) -> MultiHeadHeads:
    """``Linear(in, K)`` per head (after a LayerNorm), or a one-hidden-layer MLP when ``cfg.hidden_dim`` is set."""
    in_dim = embed_dim * (2 if cfg.pooling == "cls+mean" else 1)
    heads: dict[str, nn.Module] = {}
    for h in cfg.heads:
        if cfg.hidden_dim:
            heads[h.name] = nn.Sequential(
                nn.LayerNorm(in_dim), nn.Linear(in_dim, cfg.hidden_dim), nn.GELU(),
                nn.Linear(cfg.hidden_dim, len(h.classes)),
            )
        else:
            heads[h.name] = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, len(h.classes)))
    module = MultiHeadHeads(heads, pooling=cfg.pooling)
    for m in module.modules():
        if isinstance(m, nn.Linear):  # small init, as timm does for classifier heads: starts near uniform
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return module
