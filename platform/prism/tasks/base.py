"""The task contract: what the one train loop, the predictor and Serve need from a task.

A task turns a validated :class:`~prism.config.JobConfig` into a model, tensors, a loss, metrics and
JSON-able results. The train loop (:mod:`prism.engine.loop`) only ever talks to this interface, so
classification, detection (variable-length box targets), segmentation (masks + text prompts) and features
(no training) all run through the same loop. See ``docs/architecture.md``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from prism.config import JobConfig

__all__ = ["MetricAccumulator", "Task"]


class MetricAccumulator(ABC):
    """Accumulates per-batch statistics on one worker; :meth:`reduce` sums them across workers."""

    @abstractmethod
    def update(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
               loss: float | None = None) -> None:
        """Add one batch (model outputs and the targets from :meth:`Task.collate`)."""

    @abstractmethod
    def reduce(self) -> None:
        """All-reduce the statistics over the process group (no-op when not distributed)."""

    @abstractmethod
    def compute(self, prefix: str = "val/") -> dict[str, float]:
        """Scalar metrics, flat keys such as ``val/presence/accuracy``."""

    def export(self) -> dict[str, Any]:
        """JSON-able raw statistics (e.g. confusion matrices) saved with the checkpoint; see Task.figures."""
        return {}


class Task(ABC):
    """One task: build the model, turn batches into tensors, score and postprocess outputs."""

    name: str

    #: input normalisation, set from the backbone by :meth:`build_model`
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The full model (``.backbone`` + ``.heads``), LoRA injected if configured, nothing frozen yet."""

    @abstractmethod
    def encode_labels(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """Label columns of a validated table → integer target arrays stored in the Ray dataset."""

    @abstractmethod
    def collate(self, batch: dict[str, torch.Tensor], device: torch.device
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A Ray Data batch (``image`` uint8 ``(B, H, W, 3)`` + target columns) → model input
        ``(B, 3, H, W)`` float, normalised, on ``device`` and a dict of targets on ``device``."""

    @abstractmethod
    def loss(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss to backpropagate, and per-part values for logging."""

    @abstractmethod
    def metrics(self) -> MetricAccumulator:
        """A fresh accumulator for one evaluation pass."""

    @abstractmethod
    def infer(self, model: nn.Module, x: torch.Tensor, tta: bool | list[str] = False) -> dict[str, torch.Tensor]:
        """Inference outputs for a normalised batch ``(B, 3, H, W)``, optionally averaged over TTA views;
        what :meth:`postprocess` and the metrics accumulator take."""

    @abstractmethod
    def postprocess(self, outputs: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        """Model outputs for a batch → one JSON-able result per image."""

    def build_datasets(self, img_size: int):
        """Validated, split, lazily decoded Ray datasets: a :class:`prism.data.TrainData`."""
        raise NotImplementedError(f"task '{self.name}' does not train")

    def figures(self, stats: dict[str, Any]) -> dict[str, Any]:
        """Figures (artifact path → matplotlib Figure) from :meth:`MetricAccumulator.export` output."""
        return {}

    def results_frame(self, results: list[dict[str, Any]]) -> pd.DataFrame:
        """Postprocessed results as a flat table (one row per image)."""
        import pandas as pd

        return pd.json_normalize(results)

    def label_maps(self) -> dict[str, Any]:
        """Whatever maps model indices back to names (saved with every registered model)."""
        return {}
