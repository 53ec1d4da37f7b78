"""The DETR decoder with multi-scale deformable cross-attention (Deformable DETR), on a feature pyramid.

::

    maps [(B, D, H_l, W_l)] → memory (B, S, D) + level embedding, sine positions (for self-attention only)
    queries: Q learned (position, content) pairs → reference points (B, Q, 2) = sigmoid(Linear(position))
    each of N layers:  self-attention over queries → deformable cross-attention at the reference points
                       → FFN → class logits (B, Q, K) and boxes (B, Q, 4) normalised cxcywh
                       (iterative refinement: each layer's box moves the next layer's reference point)

Every layer's outputs are returned (the last is the prediction, the others feed auxiliary losses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from prism.tasks.detection.deformable import MSDeformAttn

__all__ = ["DecoderSettings", "DeformableDecoder", "inverse_sigmoid"]


@dataclass(frozen=True)
class DecoderSettings:
    """A decoder's size (the ``standard`` and ``lightweight`` presets of the task config fill it)."""

    layers: int = 6
    queries: int = 100
    dim: int = 256
    heads: int = 8
    points: int = 4
    ffn: int = 1024
    dropout: float = 0.0
    refine: bool = True


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class _MLP(nn.Sequential):
    def __init__(self, dim: int, out: int, layers: int = 3):
        mods: list[nn.Module] = []
        for _ in range(layers - 1):
            mods += [nn.Linear(dim, dim), nn.ReLU()]
        super().__init__(*mods, nn.Linear(dim, out))


class _Layer(nn.Module):
    def __init__(self, s: DecoderSettings, levels: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(s.dim, s.heads, dropout=s.dropout, batch_first=True)
        self.cross_attn = MSDeformAttn(s.dim, levels, s.heads, s.points)
        self.ffn = nn.Sequential(nn.Linear(s.dim, s.ffn), nn.ReLU(), nn.Dropout(s.dropout), nn.Linear(s.ffn, s.dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(s.dim), nn.LayerNorm(s.dim), nn.LayerNorm(s.dim)
        self.drop = nn.Dropout(s.dropout)

    def forward(self, tgt, pos, reference, memory, shapes):
        q = k = tgt + pos
        tgt = self.norm1(tgt + self.drop(self.self_attn(q, k, tgt, need_weights=False)[0]))
        ref = reference[:, :, None, :].expand(-1, -1, len(shapes), -1)  # the same point on every level
        tgt = self.norm2(tgt + self.drop(self.cross_attn(tgt + pos, ref, memory, shapes)))
        return self.norm3(tgt + self.drop(self.ffn(tgt)))


def sine_positions(h: int, w: int, dim: int, device, dtype) -> torch.Tensor:
    """(h·w, dim) 2-D sine position encodings of a grid (DETR's, normalised to [0, 2π])."""
    half = dim // 2
    y, x = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                          torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    y, x = (y + 0.5) / h * 2 * math.pi, (x + 0.5) / w * 2 * math.pi
    t = 10000 ** (2 * (torch.arange(half // 2, device=device, dtype=torch.float32)) / half)
    px, py = x.flatten()[:, None] / t, y.flatten()[:, None] / t
    pos = torch.cat([px.sin(), px.cos(), py.sin(), py.cos()], dim=1)
    return torch.nn.functional.pad(pos, (0, dim - pos.shape[1])).to(dtype)


class DeformableDecoder(nn.Module):
    """``N`` decoder layers over a pyramid of ``levels`` maps of ``dim`` channels, ``classes`` outputs."""

    def __init__(self, s: DecoderSettings, levels: int, classes: int):
        super().__init__()
        self.s = s
        self.level_embed = nn.Parameter(torch.zeros(levels, s.dim))
        self.query_embed = nn.Embedding(s.queries, 2 * s.dim)
        self.reference = nn.Linear(s.dim, 2)
        self.layers = nn.ModuleList(_Layer(s, levels) for _ in range(s.layers))
        n_heads = s.layers if s.refine else 1
        self.class_heads = nn.ModuleList(nn.Linear(s.dim, classes) for _ in range(n_heads))
        self.box_heads = nn.ModuleList(_MLP(s.dim, 4) for _ in range(n_heads))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.level_embed)
        prior = -math.log((1 - 0.01) / 0.01)  # focal-loss prior: 1 % foreground at the start
        for head in self.class_heads:
            nn.init.constant_(head.bias, prior)
        for head in self.box_heads:
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)
        nn.init.xavier_uniform_(self.reference.weight)
        nn.init.zeros_(self.reference.bias)

    def memory(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Pyramid maps → (B, S, D) memory with level embeddings, and the levels' (H, W)."""
        flat, shapes = [], []
        for i, m in enumerate(maps):
            shapes.append((m.shape[2], m.shape[3]))
            flat.append(m.flatten(2).transpose(1, 2) + self.level_embed[i])
        return torch.cat(flat, 1), shapes

    def _head(self, i: int) -> int:
        return i if self.s.refine else 0

    def forward(self, maps: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Per layer ``{"logits": (B, Q, K), "boxes": (B, Q, 4)}``; the last is the prediction."""
        memory, shapes = self.memory(maps)
        b = memory.shape[0]
        pos, tgt = self.query_embed.weight.split(self.s.dim, dim=1)
        pos, tgt = pos[None].expand(b, -1, -1), tgt[None].expand(b, -1, -1)
        reference = self.reference(pos).sigmoid()  # (B, Q, 2)
        outs = []
        for i, layer in enumerate(self.layers):
            tgt = layer(tgt, pos, reference, memory, shapes)
            delta = self.box_heads[self._head(i)](tgt)
            ref_full = torch.cat([reference, torch.full_like(reference, 0.1)], -1)  # a small box at the point
            boxes = (delta + inverse_sigmoid(ref_full)).sigmoid()
            outs.append({"logits": self.class_heads[self._head(i)](tgt), "boxes": boxes})
            if self.s.refine:
                reference = boxes[..., :2].detach()
        return outs
