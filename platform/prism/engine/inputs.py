"""Image tensors shared by every task: uint8 batches → normalised model input, and TTA views."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["apply_view", "to_model_input"]


def to_model_input(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """``(B, H, W, 3)`` uint8 → ``(B, 3, H, W)`` float32, normalised, on ``device``.

    Only uint8 is accepted: a float batch could be 0..1 or 0..255, and guessing wrong turns it black or
    white. Arrays of other dtypes go through :func:`prism.data.images.array_to_uint8` first (the predictor's
    ``load_image`` does).

    The uint8 batch is moved first and converted on the device, so host→device copies stay 4× smaller. The
    channels-first layout is made on the uint8 tensor (a quarter of the bytes to move), and
    ``(x / 255 - mean) / std`` is one multiply-add, ``x * (1 / (255 std)) - mean / std``, on the float copy:
    about 2.5× less CPU time than dividing, subtracting and dividing again, equal to float rounding.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images of shape (B, H, W, 3), got {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images (0..255), got {images.dtype}; convert arrays with "
                         "prism.data.images.array_to_uint8 (floats in [0, 1] are scaled by 255)")
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous().float()
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * s)).to(device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    shift = (-m / s).to(device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return x.mul_(scale).add_(shift)


def apply_view(x: torch.Tensor, op: str) -> torch.Tensor:
    """One test-time view of ``(B, 3, H, W)``: ``identity``, ``hflip``, ``vflip``, ``rot90``, ``rot270``."""
    if op == "identity":
        return x
    if op == "hflip":
        return x.flip(-1)
    if op == "vflip":
        return x.flip(-2)
    if op == "rot90":
        return torch.rot90(x, 1, dims=(-2, -1))
    if op == "rot270":
        return torch.rot90(x, 3, dims=(-2, -1))
    raise ValueError(f"unknown TTA op '{op}'; valid: identity, hflip, vflip, rot90, rot270")
