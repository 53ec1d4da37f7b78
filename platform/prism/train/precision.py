"""Mixed precision: which autocast dtype a device gets, and the context that applies it."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast", "resolve_amp"]


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA devices that support it, else fp16 on CUDA, none on CPU. ``off``: none."""
    if mode == "off" or device.type != "cuda":
        return None  # on CPU, autocast brings no speed-up for these models: train in fp32
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
