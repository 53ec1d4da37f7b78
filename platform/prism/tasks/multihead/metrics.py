"""Per-head confusion matrices, reduced across workers, and the metrics derived from them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from prism.tasks.base import MetricAccumulator
from prism.tasks.multihead.config import MultiHeadTaskConfig
from prism.tasks.multihead.labels import IGNORE
from prism.tasks.multihead.loss import multihead_loss

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
    """Confusion matrix per head over rows whose target is defined, plus the mean loss of the predictions.

    State (summable): ``cm/<head>`` float64 ``(K, K)`` counts (rows = truth) and ``loss`` float64 ``(2,)``
    = (sum over batches of loss × rows, rows).
    """

    def __init__(self, cfg: MultiHeadTaskConfig):
        self.cfg = cfg
        self.cm = {h.name: torch.zeros(len(h.classes), len(h.classes), dtype=torch.float64) for h in cfg.heads}
        self.loss_sum = torch.zeros(2, dtype=torch.float64)

    def update(self, predictions: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> None:
        """``predictions[h]``: probabilities ``(B, K_h)``; ``targets["y_<h>"]``: ``(B,)`` with -1 = skip.

        The loss is the training loss (cross-entropy with the head's weights and label smoothing) of these
        probabilities, i.e. of the prediction users get (TTA-averaged when it was)."""
        n = None
        for h in self.cfg.heads:
            y = targets[f"y_{h.name}"].detach().cpu()
            pred = predictions[h.name].detach().float().argmax(dim=-1).cpu()
            n = len(y)
            valid = y != IGNORE
            k = len(h.classes)
            idx = y[valid] * k + pred[valid]
            self.cm[h.name] += torch.bincount(idx, minlength=k * k).reshape(k, k).double()
        if n:
            log_p = {k: v.detach().float().clamp_min(torch.finfo(torch.float32).tiny).log().cpu()
                     for k, v in predictions.items()}
            loss, _ = multihead_loss(self.cfg, log_p, {k: v.detach().cpu() for k, v in targets.items()})
            self.loss_sum += torch.tensor([float(loss) * n, n], dtype=torch.float64)

    def state(self) -> dict[str, torch.Tensor]:
        return {**{f"cm/{k}": v.clone() for k, v in self.cm.items()}, "loss": self.loss_sum.clone()}

    def merge(self, state: dict[str, torch.Tensor]) -> None:
        for k in self.cm:
            self.cm[k] += torch.as_tensor(state[f"cm/{k}"], dtype=torch.float64)
        self.loss_sum += torch.as_tensor(state["loss"], dtype=torch.float64)

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
