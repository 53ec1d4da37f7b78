"""Confusion-matrix figures (sklearn's display on an Agg canvas, no pyplot state)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

__all__ = ["confusion_figure"]


def confusion_figure(cm: np.ndarray, classes: list[str], title: str = "") -> Figure:
    """A figure of the ``(K, K)`` count matrix (rows = truth) with per-row normalised colours."""
    fig = Figure(figsize=(1.2 + 1.1 * len(classes), 1.0 + 1.0 * len(classes)), dpi=110)
    ax = fig.add_subplot(111)
    row = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, row, out=np.zeros(cm.shape, dtype=float), where=row > 0)
    disp = ConfusionMatrixDisplay(norm, display_labels=classes)
    disp.plot(ax=ax, cmap="Blues", colorbar=False, values_format=".2f", xticks_rotation=30)
    for (i, j), text in np.ndenumerate(disp.text_):
        text.set_text(f"{norm[i, j]:.2f}\n({cm[i, j]})")
        text.set_fontsize(8)
    ax.set_title(f"{title} — n={int(cm.sum())}")
    fig.tight_layout()
    return fig
