"""Test-time augmentation views of an image batch, shared by tasks whose outputs are invariant to them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["VIEWS", "apply_view", "mean_softmax", "tta_views", "view_outputs"]

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


def view_outputs(model: Callable[[dict], dict[str, torch.Tensor]], inputs: dict[str, torch.Tensor],
                 ops: Sequence[str]) -> dict[str, list[torch.Tensor]]:
    """``model`` on each view of ``inputs["image"]`` (other inputs unchanged): ``{output: [one per view]}``."""
    views: dict[str, list[torch.Tensor]] = {}
    for op in ops:
        for k, z in model({**inputs, "image": apply_view(inputs["image"], op)}).items():
            views.setdefault(k, []).append(z)
    return views


def mean_softmax(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean over views of ``softmax(logits)`` (each ``(B, K)``), float32, taken in log space
    (``logsumexp`` of the ``log_softmax``es minus ``log V``) so it stays finite where a probability
    underflows."""
    logs = torch.stack([z.float().log_softmax(dim=-1) for z in logits])
    return (logs.logsumexp(dim=0) - math.log(len(logits))).exp()


def tta_views(configured: Sequence[str], tta: bool | Sequence[str] = True) -> list[str]:
    """The views averaged for ``tta``: ``identity`` plus, for True, the task's ``configured`` views (what
    ``prism predict``, ``prism evaluate``, Serve and training's validation use by default), for False none,
    or an explicit list."""
    return ["identity"] + (list(configured) if tta is True else list(tta or []))
