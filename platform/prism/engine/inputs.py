"""Batches between the data, the model and the results, for every task.

- :func:`to_model_input`: ``uint8 (B, H, W, 3)`` → normalised float ``(B, 3, H, W)`` on the device.
- :func:`model_inputs`: a task's collated inputs (``{"image": uint8 (B, H, W, 3), …}``) → device inputs.
- :func:`to_device`: tensors anywhere in nested dicts / lists / tuples moved to a device.
- :func:`stack_inputs`: per-image inputs from ``Task.preprocess`` → one numpy batch.
- :func:`unbatch`: batched predictions → one dict per image (what ``Task.postprocess`` takes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["model_inputs", "stack_inputs", "to_device", "to_model_input", "unbatch"]


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


def to_device(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor in nested dicts / lists / tuples moved to ``device`` (structure kept)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def model_inputs(inputs: Mapping[str, Any], device: torch.device | str, mean: Sequence[float],
                 std: Sequence[float]) -> dict[str, Any]:
    """A task's collated inputs → what the model takes, on ``device``.

    ``inputs["image"]`` ``uint8 (B, H, W, 3)`` (tensor or array) becomes float ``(B, 3, H, W)`` normalised with
    the backbone's ``mean`` / ``std`` (:func:`to_model_input`); other entries (e.g. ``tokens`` int64
    ``(B, L)``) are moved as they are, numpy arrays as tensors.
    """
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if key == "image":
            out[key] = to_model_input(value, mean, std, device)
        else:
            out[key] = to_device(value, device)
    return out


def stack_inputs(items: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-image inputs (``Task.preprocess``, no batch dim) → ``{key: (B, …)}``; every image must have the
    same keys and shapes per key (``ValueError`` naming the key otherwise)."""
    if not items:
        raise ValueError("no inputs to stack")
    keys = list(items[0])
    out = {}
    for key in keys:
        try:
            out[key] = np.stack([np.asarray(item[key]) for item in items])
        except (KeyError, ValueError) as exc:
            raise ValueError(f"cannot batch input {key!r}: {exc}") from None
    return out


def unbatch(predictions: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    """``{name: (B, …) tensor or list of B items}`` → B dicts ``{name: item}`` (tensors detached, on CPU)."""
    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, value in predictions.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
        if len(value) != n:
            raise ValueError(f"prediction {key!r} has {len(value)} items for a batch of {n}")
        for i in range(n):
            rows[i][key] = value[i]
    return rows
