"""A simple feature pyramid (ViTDet) from a ViT's single patch grid: up- and down-sampled copies of it.

::

    patches (B, h, w, C) ──┬─ ConvTranspose ×2          → (B, D, 2h, 2w)     scale 2
                           ├─ 1×1                        → (B, D, h, w)       scale 1
                           ├─ MaxPool /2                 → (B, D, h/2, w/2)   scale 1/2
                           └─ MaxPool /4                 → (B, D, h/4, w/4)   scale 1/4  (as many as asked)

Each branch ends in 1×1 and 3×3 convolutions with GroupNorm to ``D`` channels. CLS and register tokens are
not in ``patches`` (the backbone contract), so the memory keeps the image's 2-D layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["SimpleFeaturePyramid"]


def _groups(dim: int) -> int:
    """GroupNorm groups: 32 as ViTDet, but at least 2 channels per group, so that one image whose coarsest
    level is 1 × 1 still has more than one value per group."""
    return max(1, min(32, dim // 2))


def _out_convs(c_in: int, dim: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, dim, 1), nn.GroupNorm(_groups(dim), dim), nn.Conv2d(dim, dim, 3, padding=1),
            nn.GroupNorm(_groups(dim), dim)]


class SimpleFeaturePyramid(nn.Module):
    """``scales`` ⊂ {4, 2, 1, 0.5, 0.25}: the levels, finest first, as multiples of the patch grid."""

    def __init__(self, c_in: int, dim: int, scales: Sequence[float] = (2.0, 1.0, 0.5)):
        super().__init__()
        self.scales = tuple(float(s) for s in scales)
        branches = []
        for s in self.scales:
            if s == 4.0:
                pre = [nn.ConvTranspose2d(c_in, c_in // 2, 2, stride=2), nn.GroupNorm(1, c_in // 2), nn.GELU(),
                       nn.ConvTranspose2d(c_in // 2, c_in // 4, 2, stride=2)]
                c = c_in // 4
            elif s == 2.0:
                pre, c = [nn.ConvTranspose2d(c_in, c_in // 2, 2, stride=2)], c_in // 2
            elif s == 1.0:
                pre, c = [], c_in
            elif s in (0.5, 0.25):
                pre, c = [nn.MaxPool2d(int(1 / s), ceil_mode=True)], c_in
            else:
                raise ValueError(f"pyramid scales must be among 4, 2, 1, 0.5, 0.25; got {s}")
            branches.append(nn.Sequential(*pre, *_out_convs(c, dim)))
        self.branches = nn.ModuleList(branches)

    def forward(self, patches: torch.Tensor) -> list[torch.Tensor]:
        """(B, h, w, C) → one (B, D, H_l, W_l) map per scale."""
        x = patches.permute(0, 3, 1, 2).contiguous()
        return [branch(x) for branch in self.branches]
