"""Top-1 / top-k accuracy, macro-F1 and per-class accuracy of single-label predictions, from a confusion
matrix and a top-k hit count that sum across workers."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from prism.tasks.base import MetricAccumulator
from prism.tasks.classify.config import ClassifyTaskConfig
from prism.tasks.classify.loss import classify_loss

__all__ = ["FULL_CONFUSION_MAX", "ClassifyMetrics", "most_confused", "per_class_table"]

FULL_CONFUSION_MAX = 30
"""Up to this many classes the whole confusion matrix is exported (and drawn); above, the most confused
pairs only, so a checkpoint of a 1000-class model stays small and its figures stay readable."""
TOP_PAIRS = 25


def most_confused(cm: np.ndarray, n: int = TOP_PAIRS) -> list[list[int]]:
    """The ``n`` largest off-diagonal cells of ``cm`` (rows = truth) as ``[truth, predicted, count]``,
    largest first (ties by index); cells of count 0 are left out."""
    off = cm.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    flat = off.ravel()
    k = min(n, int((flat > 0).sum()))
    if k == 0:
        return []
    idx = np.argpartition(-flat, k - 1)[:k]
    idx = idx[np.lexsort((idx, -flat[idx]))]
    size = cm.shape[1]
    return [[int(i // size), int(i % size), int(flat[i])] for i in idx]


def per_class_table(stats: dict[str, Any], classes: list[str]):
    """One row per class: ``class, support, correct, accuracy, precision, recall, f1`` (a DataFrame;
    accuracy = recall for single-label data; empty where undefined)."""
    import pandas as pd

    support = np.asarray(stats["support"], dtype=np.float64)
    correct = np.asarray(stats["correct"], dtype=np.float64)
    predicted = np.asarray(stats["predicted"], dtype=np.float64)
    recall = np.divide(correct, support, out=np.full_like(support, np.nan), where=support > 0)
    precision = np.divide(correct, predicted, out=np.zeros_like(support), where=predicted > 0)
    denom = precision + np.nan_to_num(recall)
    f1 = np.divide(2 * precision * np.nan_to_num(recall), denom, out=np.zeros_like(support), where=denom > 0)
    return pd.DataFrame({"class": classes, "support": support.astype(np.int64), "correct": correct.astype(np.int64),
                         "accuracy": recall, "precision": precision, "recall": recall, "f1": f1})


class ClassifyMetrics(MetricAccumulator):
    """State (summable): ``cm`` float64 ``(K, K)`` counts (rows = truth), ``topk`` float64 ``(1,)`` rows
    whose class is among the ``k = min(5, K - 1)`` most probable, ``loss`` float64 ``(2,)`` = (sum of loss ×
    rows, rows).

    Reported: ``top1``, ``top5`` (when K > 5), ``macro_f1`` (sklearn's, ``zero_division=0``, over all K
    classes), ``mean_class_accuracy`` (over classes present) and ``loss`` (the training loss of the
    predicted probabilities).
    """

    def __init__(self, cfg: ClassifyTaskConfig):
        self.cfg = cfg
        k = cfg.num_classes
        self.k = min(5, k)
        self.cm = torch.zeros(k, k, dtype=torch.float64)
        self.topk = torch.zeros(1, dtype=torch.float64)
        self.loss_sum = torch.zeros(2, dtype=torch.float64)

    def update(self, predictions: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> None:
        """``predictions["probs"]``: ``(B, K)``; ``targets["y_label"]``: int64 ``(B,)``."""
        probs = predictions["probs"].detach().float().cpu()
        y = targets["y_label"].detach().cpu()
        if not len(y):
            return
        k = self.cfg.num_classes
        self.cm += torch.bincount(y * k + probs.argmax(dim=-1), minlength=k * k).reshape(k, k).double()
        top = probs.topk(self.k, dim=-1).indices
        self.topk += (top == y[:, None]).any(dim=-1).sum().double()
        log_p = probs.clamp_min(torch.finfo(torch.float32).tiny).log()
        self.loss_sum += torch.tensor([float(classify_loss(self.cfg, log_p, y)) * len(y), len(y)],
                                      dtype=torch.float64)

    def state(self) -> dict[str, torch.Tensor]:
        return {"cm": self.cm.clone(), "topk": self.topk.clone(), "loss": self.loss_sum.clone()}

    def merge(self, state: dict[str, torch.Tensor]) -> None:
        self.cm += torch.as_tensor(state["cm"], dtype=torch.float64)
        self.topk += torch.as_tensor(state["topk"], dtype=torch.float64)
        self.loss_sum += torch.as_tensor(state["loss"], dtype=torch.float64)

    def compute(self, prefix: str = "val/") -> dict[str, float]:
        cm = self.cm.numpy()
        n = cm.sum()
        if n == 0:
            return {f"{prefix}top1": float("nan")}
        table = per_class_table(self._counts(), list(self.cfg.classes))
        out = {f"{prefix}top1": float(np.trace(cm) / n), f"{prefix}macro_f1": float(table["f1"].mean()),
               f"{prefix}mean_class_accuracy": float(table["accuracy"].mean(skipna=True)),
               f"{prefix}loss": float(self.loss_sum[0] / self.loss_sum[1])}
        if self.cfg.num_classes > 5:
            out[f"{prefix}top5"] = float(self.topk[0] / n)
        return out

    def _counts(self) -> dict[str, list[int]]:
        cm = self.cm.numpy().astype(np.int64)
        return {"support": cm.sum(axis=1).tolist(), "correct": np.diag(cm).tolist(),
                "predicted": cm.sum(axis=0).tolist()}

    def export(self) -> dict[str, Any]:
        """Per-class counts, the most confused pairs and, for K ≤ :data:`FULL_CONFUSION_MAX`, the matrix."""
        cm = self.cm.numpy().astype(np.int64)
        out: dict[str, Any] = {**self._counts(), "confused": most_confused(cm)}
        if self.cfg.num_classes <= FULL_CONFUSION_MAX:
            out["confusion"] = cm.tolist()
        return out
