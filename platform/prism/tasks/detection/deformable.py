"""Multi-scale deformable attention (Deformable DETR), in pure PyTorch, one ``grid_sample`` for everything.

Each query attends to ``P`` sampled points in each of ``L`` feature levels, per head::

    value               (B, S, M, D)      S = Σ_l H_l·W_l tokens of all levels, M heads of D channels
    spatial_shapes      [(H_l, W_l)] · L  the levels' grids, in the order their tokens sit in ``value``
    sampling_locations  (B, Q, M, L, P, 2) normalised (x, y) in [0, 1] of each level's grid
    attention_weights   (B, Q, M, L, P)   softmax over L·P per query and head
    → output            (B, Q, M·D)

A point at normalised ``(x, y)`` of a level samples its grid bilinearly at pixel ``(x·W − 0.5, y·H −
0.5)`` with zeros outside (``grid_sample(align_corners=False, padding_mode="zeros")``). The levels are
zero-padded to the largest grid and stacked along the batch axis, and each level's locations rescaled into
its corner of that canvas, so one ``grid_sample`` call samples every head, level and point at once: the
padding reads as the zeros outside that level, exactly. :class:`MSDeformAttn` is the module that predicts
sampling offsets and weights from the queries, around reference points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MSDeformAttn", "ms_deform_attn"]


def ms_deform_attn(value: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]], sampling_locations: torch.Tensor,
                   attention_weights: torch.Tensor) -> torch.Tensor:
    """The attention of the module docstring: ``(B, Q, M·D)``."""
    b, s, m, d = value.shape
    _, q, _, levels, points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    if len(shapes) != levels or sum(h * w for h, w in shapes) != s:
        raise ValueError(f"spatial_shapes {shapes} do not describe value's {s} tokens in {levels} levels")
    h_max, w_max = max(h for h, _ in shapes), max(w for _, w in shapes)
    canvas = value.new_zeros(levels, b * m, d, h_max, w_max)
    start = 0
    for i, (h, w) in enumerate(shapes):  # copies only: L ≤ a handful
        lvl = value[:, start:start + h * w]  # (B, h·w, M, D)
        canvas[i, :, :, :h, :w] = lvl.permute(0, 2, 3, 1).reshape(b * m, d, h, w)
        start += h * w
    scale = torch.tensor([[w / w_max, h / h_max] for h, w in shapes], dtype=sampling_locations.dtype,
                         device=sampling_locations.device)  # (L, 2): a level's [0, 1] → its corner of the canvas
    grid = 2 * sampling_locations * scale[:, None] - 1  # (B, Q, M, L, P, 2)
    grid = grid.permute(3, 0, 2, 1, 4, 5).reshape(levels * b * m, q, points, 2)
    sampled = F.grid_sample(canvas.reshape(levels * b * m, d, h_max, w_max), grid, mode="bilinear",
                            padding_mode="zeros", align_corners=False)  # (L·B·M, D, Q, P)
    sampled = sampled.reshape(levels, b, m, d, q, points).permute(1, 2, 3, 4, 0, 5)  # (B, M, D, Q, L, P)
    weights = attention_weights.permute(0, 2, 1, 3, 4)[:, :, None]  # (B, M, 1, Q, L, P)
    out = (sampled * weights).sum(dim=(-1, -2))  # (B, M, D, Q)
    return out.permute(0, 3, 1, 2).reshape(b, q, m * d)


class MSDeformAttn(nn.Module):
    """Deformable cross-attention: queries (B, Q, C) with reference points (B, Q, L, 2) in [0, 1] attend to
    the flattened multi-scale memory (B, S, C) of ``spatial_shapes``; ``heads`` × ``points`` per level."""

    def __init__(self, dim: int, levels: int, heads: int = 8, points: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.dim, self.levels, self.heads, self.points = dim, levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's init: offsets start on rings of ``1..P`` pixels in ``heads`` directions."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.heads, dtype=torch.float32) * (2 * math.pi / self.heads)
        ring = torch.stack([angles.cos(), angles.sin()], -1)
        ring = ring / ring.abs().max(-1, keepdim=True).values
        ring = ring[:, None, None].repeat(1, self.levels, self.points, 1)
        ring *= torch.arange(1, self.points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(ring.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, memory: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]], memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``query`` (B, Q, C), ``reference_points`` (B, Q, L, 2) normalised (x, y), ``memory`` (B, S, C),
        ``memory_mask`` (B, S) True where padded → (B, Q, C)."""
        b, q, _ = query.shape
        value = self.value_proj(memory)
        if memory_mask is not None:
            value = value.masked_fill(memory_mask[..., None], 0.0)
        value = value.view(b, memory.shape[1], self.heads, self.dim // self.heads)
        offsets = self.sampling_offsets(query).view(b, q, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(b, q, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(b, q, self.heads, self.levels, self.points)
        normaliser = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn(value, spatial_shapes, locations, weights))
