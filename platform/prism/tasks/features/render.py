"""Standardised components → colours, with one scale for the whole collection (so videos do not flicker).

A component value ``z`` (unit variance over the collection, :class:`~prism.tasks.features.model.PCAHead`)
maps to the intensity ``clip(0.5 + z / (2 · sigmas), 0, 1)``: ``±sigmas`` standard deviations span the
range, whatever else is in the image or frame. Components ``[start, start + n)`` become

    n = 1 → grey,   n = 2 → (red, green, 0.5),   n = 3 → RGB.

Shapes: ``z`` is (h, w, K) float (a patch grid); outputs are uint8 (H, W, 3).
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["colourise", "encode_png", "render_components", "side_by_side"]


def colourise(z: np.ndarray, start: int = 0, n: int = 3, sigmas: float = 2.5) -> np.ndarray:
    """(h, w, K) standardised components → uint8 (h, w, 3) by the collection-wide scale."""
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 3:
        raise ValueError(f"component maps must be (h, w, K), got shape {z.shape}")
    if n not in (1, 2, 3):
        raise ValueError(f"n must be 1, 2 or 3 components, got {n}")
    if start < 0 or start + n > z.shape[-1]:
        raise ValueError(f"components [{start}, {start + n}) are not in the {z.shape[-1]} kept")
    v = np.clip(0.5 + z[..., start:start + n] / (2.0 * sigmas), 0.0, 1.0)
    if n == 1:
        v = np.repeat(v, 3, axis=-1)
    elif n == 2:
        v = np.concatenate([v, np.full(v.shape[:-1] + (1,), 0.5, np.float32)], axis=-1)
    return np.round(v * 255.0).astype(np.uint8)


def render_components(z: np.ndarray, size: tuple[int, int] | None = None, upsample: str = "smooth",
                      start: int = 0, n: int = 3, sigmas: float = 2.5) -> np.ndarray:
    """(h, w, K) components → uint8 (H, W, 3) at ``size`` = (H, W) (None = the patch grid itself):
    ``patch`` repeats each cell (nearest), ``smooth`` interpolates the values bilinearly, then colours."""
    z = np.asarray(z, dtype=np.float32)
    if size is not None and tuple(size) != z.shape[:2]:
        if upsample not in ("patch", "smooth"):
            raise ValueError(f"upsample must be 'patch' or 'smooth', got {upsample!r}")
        t = torch.from_numpy(np.ascontiguousarray(z)).permute(2, 0, 1)[None]
        mode = {"patch": {"mode": "nearest-exact"}, "smooth": {"mode": "bilinear", "align_corners": False}}
        t = F.interpolate(t, size=tuple(int(s) for s in size), **mode[upsample])
        z = t[0].permute(1, 2, 0).numpy()
    return colourise(z, start, n, sigmas)


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two uint8 (H, W, 3) images of one height, left | right."""
    if left.shape[0] != right.shape[0]:
        right = np.asarray(Image.fromarray(right).resize((right.shape[1] * left.shape[0] // right.shape[0],
                                                          left.shape[0]), Image.BILINEAR))
    return np.concatenate([left, right], axis=1)


def encode_png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()
