"""The head of the patch-feature task: a fixed PCA basis that maps patch tokens to standardised components.

::

    features["patches"]  (B, h, w, C)
      └─ PCAHead         z = ((x - mean) @ components.T) / sqrt(eigenvalues)     → "maps" (B, h, w, K)

``z`` has unit variance over the collection the basis was fitted on, so one colour scale (± a few
standard deviations) fits every image and every frame: identical patches give identical values anywhere.
With a foreground basis, ``"foreground"`` (B, h, w) marks the patches whose first component passes the
threshold and ``"fg_maps"`` (B, h, w, K) are their components in the foreground PCA (0 elsewhere).

The basis lives in buffers (no parameters: nothing here trains); the bundle carries it as the task's
``pca.safetensors`` artifact. A fresh head holds the first K coordinate axes with unit scale (``fitted``
is 0) until a basis is set.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prism.tasks.features.stats import PCABasis

__all__ = ["PCAHead"]


class PCAHead(nn.Module):
    """K components of a C-wide patch feature (and optionally a foreground basis)."""

    def __init__(self, dim: int, k: int, foreground: bool = False):
        super().__init__()
        k = min(int(k), int(dim))
        self.dim, self.k, self.has_foreground = int(dim), k, bool(foreground)
        eye = torch.eye(dim)[:k]
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("components", eye.clone())
        self.register_buffer("scale", torch.ones(k))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.uint8))
        if foreground:
            self.register_buffer("fg_mean", torch.zeros(dim))
            self.register_buffer("fg_components", eye.clone())
            self.register_buffer("fg_scale", torch.ones(k))
            self.register_buffer("fg_threshold", torch.zeros(()))
            self.register_buffer("fg_sign", torch.ones(()))

    def set_basis(self, basis: PCABasis, fg: PCABasis | None = None, threshold: float = 0.0,
                  invert: bool = False) -> None:
        """Take ``basis`` (its first K components) and, with a foreground head, ``fg``."""
        self._set("", basis)
        if self.has_foreground:
            if fg is None:
                raise ValueError("this head has a foreground PCA: give its basis too")
            self._set("fg_", fg)
            self.fg_threshold.fill_(float(threshold))
            self.fg_sign.fill_(-1.0 if invert else 1.0)
        self.fitted.fill_(1)

    def _set(self, prefix: str, basis: PCABasis) -> None:
        if basis.components.shape[0] < self.k or basis.components.shape[1] != self.dim:
            raise ValueError(f"a PCA basis of shape {tuple(basis.components.shape)} cannot fill a head of "
                             f"{self.k} components of width {self.dim}")
        getattr(self, f"{prefix}mean").copy_(basis.mean)
        getattr(self, f"{prefix}components").copy_(basis.components[: self.k])
        getattr(self, f"{prefix}scale").copy_(basis.eigenvalues[: self.k].clamp_min(1e-12).sqrt())

    def standardised(self, x: torch.Tensor, prefix: str = "") -> torch.Tensor:
        """Patch features (..., C) → standardised components (..., K), in float32."""
        x = x.float()
        z = (x - getattr(self, f"{prefix}mean")) @ getattr(self, f"{prefix}components").T
        return z / getattr(self, f"{prefix}scale")

    def foreground_mask(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised components (..., K) of the main basis → bool (...) foreground patches."""
        return (z[..., 0] - self.fg_threshold) * self.fg_sign > 0

    def forward(self, features: dict[str, Any], inputs: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
        z = self.standardised(features["patches"])
        out = {"maps": z}
        if self.has_foreground:
            fg = self.foreground_mask(z)
            out["foreground"] = fg
            out["fg_maps"] = self.standardised(features["patches"], "fg_") * fg[..., None]
        return out
