"""One batch of predictions, as every door computes them: no gradients, the job's mixed precision.

Training's validation, ``prism evaluate``, the predictor (``prism predict``, pyfunc) and Serve all call
:func:`predict_batch`, so a checkpoint is chosen on the behaviour users get.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from prism.engine.precision import autocast, resolve_amp

if TYPE_CHECKING:
    from torch import nn

    from prism.tasks.base import Task

__all__ = ["predict_batch"]


@torch.no_grad()
def predict_batch(task: Task, model: nn.Module, inputs: dict[str, Any], tta: bool | list[str] = True,
                  amp: str = "auto") -> dict[str, Any]:
    """``task.predictions(model, inputs, tta)`` under ``no_grad`` and the autocast of ``amp`` (``train.amp``:
    bf16 / fp16 on CUDA, fp32 on CPU unless ``bf16``) on the device of ``inputs["image"]``."""
    device = inputs["image"].device
    with autocast(device, resolve_amp(amp, device)):
        return task.predictions(model, inputs, tta)
