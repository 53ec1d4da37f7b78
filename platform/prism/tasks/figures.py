"""Figures of classification results shared by the tasks, drawn with ``matplotlib.figure.Figure`` (no
pyplot state): a confusion matrix for few classes; for many, the most confused pairs and a histogram of
per-class accuracy, which stay readable and cheap at K = 1000."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

__all__ = ["accuracy_histogram", "confusion_figure", "most_confused_figure"]


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


def most_confused_figure(pairs: list[list[int]], classes: list[str], support: list[int], title: str = "") -> Figure:
    """Horizontal bars of the most confused ``[truth, predicted, count]`` pairs, largest on top, each
    labelled ``truth → predicted`` with its share of the true class's images."""
    pairs = list(pairs)
    fig = Figure(figsize=(7.5, 1.2 + 0.32 * max(1, len(pairs))), dpi=110)
    ax = fig.add_subplot(111)
    if not pairs:
        ax.text(0.5, 0.5, "no confusions", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        labels = [f"{classes[t]} → {classes[p]}" for t, p, _ in pairs]
        counts = [c for _, _, c in pairs]
        y = np.arange(len(pairs))[::-1]
        ax.barh(y, counts, color="tab:red", alpha=0.8)
        ax.set_yticks(y, labels, fontsize=8)
        for yi, (t, _, c) in zip(y, pairs, strict=True):
            share = c / support[t] if support[t] else 0.0
            ax.text(c, yi, f" {c} ({share:.0%})", va="center", fontsize=7)
        ax.set_xlabel("images (share of the true class)")
        ax.margins(x=0.18)
    ax.set_title(title or f"most confused pairs (top {len(pairs)})")
    fig.tight_layout()
    return fig


def accuracy_histogram(accuracy: np.ndarray, title: str = "") -> Figure:
    """Histogram of per-class accuracy (classes without images left out), the mean marked."""
    acc = np.asarray(accuracy, dtype=np.float64)
    acc = acc[np.isfinite(acc)]
    fig = Figure(figsize=(6.4, 3.6), dpi=110)
    ax = fig.add_subplot(111)
    ax.hist(acc, bins=np.linspace(0, 1, 21), color="tab:blue", alpha=0.85, edgecolor="white")
    if len(acc):
        ax.axvline(acc.mean(), color="black", linestyle="--", linewidth=1, label=f"mean {acc.mean():.3f}")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel("per-class accuracy")
    ax.set_ylabel("classes")
    ax.set_xlim(0, 1)
    ax.set_title(title or f"per-class accuracy over {len(acc)} classes")
    fig.tight_layout()
    return fig
