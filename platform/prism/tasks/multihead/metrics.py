"""Per-head confusion matrices, reduced across workers, and the metrics derived from them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from prism.runtime.distributed import all_reduce_sum
from prism.tasks.base import MetricAccumulator
from prism.tasks.multihead.config import MultiHeadTaskConfig
from prism.tasks.multihead.labels import IGNORE

__all__ = ["MultiHeadMetrics", "scores_from_confusion"]


def scores_from_confusion(cm: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1 from a ``(K, K)`` matrix (rows = truth).

    Matches sklearn with ``labels=range(K)`` and ``zero_division=0``: a class never predicted has
    precision 0, a class never present has recall 0, and both count in the macro average.
    """
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    total = cm.sum()
    return {
        "accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
        "macro_f1": float(f1.mean()),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
    }


class MultiHeadMetrics(MetricAccumulator):
    """Confusion matrix per head over rows whose target is defined, plus the mean loss."""

    def __init__(self, cfg: MultiHeadTaskConfig):
        self.cfg = cfg
        self.cm = {h.name: torch.zeros(len(h.classes), len(h.classes), dtype=torch.float64) for h in cfg.heads}
        self.loss_sum = torch.zeros(2, dtype=torch.float64)  # (sum of batch losses × rows, rows)

    def update(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
               loss: float | None = None) -> None:
        """``outputs[h]``: logits or probabilities ``(B, K_h)``; ``targets["y_<h>"]``: ``(B,)`` with -1 = skip."""
        n = None
        for h in self.cfg.heads:
            y = targets[f"y_{h.name}"].detach().cpu()
            pred = outputs[h.name].detach().float().argmax(dim=-1).cpu()
            n = len(y)
            valid = y != IGNORE
            k = len(h.classes)
            idx = y[valid] * k + pred[valid]
            self.cm[h.name] += torch.bincount(idx, minlength=k * k).reshape(k, k).double()
        if loss is not None and n:
            self.loss_sum += torch.tensor([loss * n, n], dtype=torch.float64)

    def reduce(self) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            return
        flat = all_reduce_sum(torch.cat([c.flatten() for c in self.cm.values()] + [self.loss_sum]))
        offset = 0
        for name, c in self.cm.items():
            self.cm[name] = flat[offset:offset + c.numel()].reshape(c.shape).clone()
            offset += c.numel()
        self.loss_sum = flat[offset:].clone()

    def compute(self, prefix: str = "val/") -> dict[str, float]:
        out: dict[str, float] = {}
        accs, f1s = [], []
        for h in self.cfg.heads:
            s = scores_from_confusion(self.cm[h.name].numpy())
            out[f"{prefix}{h.name}/accuracy"] = s["accuracy"]
            out[f"{prefix}{h.name}/macro_f1"] = s["macro_f1"]
            for i, c in enumerate(h.classes):
                out[f"{prefix}{h.name}/precision/{c}"] = float(s["precision"][i])
                out[f"{prefix}{h.name}/recall/{c}"] = float(s["recall"][i])
            if not np.isnan(s["accuracy"]):
                accs.append(s["accuracy"])
                f1s.append(s["macro_f1"])
        out[f"{prefix}accuracy"] = float(np.mean(accs)) if accs else float("nan")
        out[f"{prefix}macro_f1"] = float(np.mean(f1s)) if f1s else float("nan")
        if self.loss_sum[1] > 0:
            out[f"{prefix}loss"] = float(self.loss_sum[0] / self.loss_sum[1])
        return out

    def confusion(self) -> dict[str, np.ndarray]:
        """``{head: (K, K) int array}``, rows = truth, columns = prediction."""
        return {k: v.numpy().astype(np.int64) for k, v in self.cm.items()}

    def export(self) -> dict[str, Any]:
        return {"confusion": {k: v.tolist() for k, v in self.confusion().items()}}
