"""Mixed precision: which autocast dtype a device gets, and the context that applies it."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast", "resolve_amp"]


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device``; None = full fp32.

    ``auto``: bf16 on CUDA devices that support it, else fp16 on CUDA; none on CPU. ``bf16``: bf16 on CUDA
    and on CPU too (CPUs with AVX512-BF16 or AMX run bf16 matmuls about twice as fast as fp32; older ones
    emulate it slowly, so CPU bf16 is never chosen by ``auto``). ``fp16``: fp16 on CUDA, none on CPU.
    ``off``: none.
    """
    if mode == "off":
        return None
    if device.type != "cuda":
        return torch.bfloat16 if mode == "bf16" else None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
