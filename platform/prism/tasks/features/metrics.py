"""How well a PCA basis describes a set of images: the variance of its standardised components there.

On the collection the basis was fitted on, every standardised component has variance 1 (``E[z²] = 1``
up to the mean's shift); on other images the values say how much of each direction they hold. Sums of
``z²`` and the patch count add across workers."""

from __future__ import annotations

from typing import Any

import torch

from prism.tasks.base import MetricAccumulator

__all__ = ["ComponentVariance"]


class ComponentVariance(MetricAccumulator):
    """``val/component_variance`` (mean over the kept components of ``E[z²]``) and one value per component."""

    def __init__(self, k: int | None = None):
        """``k`` components; None = as many as the first batch has."""
        self.sq = None if k is None else torch.zeros(k, dtype=torch.float64)
        self.n = torch.zeros((), dtype=torch.float64)

    def _add(self, sq: torch.Tensor, n: torch.Tensor | float) -> None:
        self.sq = sq.clone() if self.sq is None else self.sq + sq
        self.n += n

    def update(self, predictions: dict[str, Any], targets: Any) -> None:
        z = predictions["maps"].detach().double().cpu()  # (B, h, w, K)
        z = z.reshape(-1, z.shape[-1])
        self._add((z * z).sum(0), z.shape[0])

    def state(self) -> dict[str, Any]:
        return {"sq": torch.zeros(0, dtype=torch.float64) if self.sq is None else self.sq.clone(),
                "n": self.n.clone()}

    def merge(self, state: dict[str, Any]) -> None:
        if state["sq"].numel():
            self._add(state["sq"], state["n"])

    def compute(self, prefix: str = "val/") -> dict[str, float]:
        if self.sq is None or float(self.n) == 0:
            return {f"{prefix}component_variance": float("nan")}
        per = self.sq / self.n
        out = {f"{prefix}component_variance": float(per.mean())}
        out.update({f"{prefix}component_variance/{i}": float(v) for i, v in enumerate(per)})
        return out
