"""Test-time augmentation views of an image batch, shared by tasks whose outputs are invariant to them."""

from __future__ import annotations

import torch

__all__ = ["VIEWS", "apply_view"]

VIEWS = ("identity", "hflip", "vflip", "rot90", "rot270")


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
