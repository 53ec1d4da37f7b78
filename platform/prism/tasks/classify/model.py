"""The classifier head: pooled backbone features → an optional MLP → K logits, with the embedding it
classifies (what class prototypes are built from)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prism.tasks.classify.config import ClassifyTaskConfig

__all__ = ["ClassifyHead", "build_head", "pool_features"]


def pool_features(features: dict[str, torch.Tensor], pooling: str) -> torch.Tensor:
    """Backbone features → ``(B, C)`` (``cls`` / ``mean`` of the patches) or ``(B, 2C)`` (``cls+mean``)."""
    if pooling == "cls":
        return features["cls"]
    mean = features["patches"].mean(dim=(1, 2))
    return mean if pooling == "mean" else torch.cat([features["cls"], mean], dim=-1)


class ClassifyHead(nn.Module):
    """``forward(features, inputs)`` → ``{"logits": (B, K), "embedding": (B, D)}`` (+ ``"image_embedding":
    (B, E)``, the backbone's projected embedding, passed through for CLIP backbones).

    ``embedding`` is the input of the last Linear: the pooled features after the LayerNorm and the hidden
    layers (``D`` = the last hidden size, or the pooled width for a linear head).
    """

    def __init__(self, in_dim: int, num_classes: int, hidden: list[int], dropout: float = 0.0,
                 pooling: str = "cls"):
        super().__init__()
        self.pooling = pooling
        layers: list[nn.Module] = [nn.LayerNorm(in_dim)]
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU(), nn.Dropout(dropout)]
            width = h
        self.mlp = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)
        self.embed_dim = width

    def forward(self, features: dict[str, torch.Tensor], inputs: dict[str, Any] | None = None
                ) -> dict[str, torch.Tensor]:
        embedding = self.mlp(pool_features(features, self.pooling))
        out = {"logits": self.fc(embedding), "embedding": embedding}
        if "embedding" in features:  # CLIP's projected image embedding, for zero-shot by class names
            out["image_embedding"] = features["embedding"]
        return out


def build_head(cfg: ClassifyTaskConfig, embed_dim: int) -> ClassifyHead:
    """The head for ``cfg`` on a backbone of width ``embed_dim``; Linear layers start small (timm's
    classifier init), so the untrained head predicts near-uniform probabilities."""
    in_dim = embed_dim * (2 if cfg.head.pooling == "cls+mean" else 1)
    head = ClassifyHead(in_dim, cfg.num_classes, cfg.head.hidden, cfg.head.dropout, cfg.head.pooling)
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return head
