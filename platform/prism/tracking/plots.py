"""Training-curve plots logged as PNG artifacts under ``plots/`` of the active run.

Figures are built with the object-oriented Matplotlib API on an explicit Agg canvas: no
``pyplot`` import, no global backend switch, nothing left in pyplot's figure registry.

History format (one record per epoch, what the training driver accumulates)::

    {"epoch": 3, "stage_index": 1, "stage_name": "lora", "train/loss": 0.41, "val/loss": 0.47,
     "val/presence/accuracy": 0.88, ...}

``epoch`` is required; ``stage_index`` / ``stage_name`` drive the shaded stage spans; missing or
non-finite metric values leave gaps.
"""

from __future__ import annotations

import logging
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import mlflow
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
LOSS_KEYS = ("train/loss", "val/loss")
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def log_figure(fig: Figure, path: str) -> str:
    """Log a Matplotlib figure as artifact ``path`` (extension picks the format) and close it.

    Closing only matters for figures made through ``pyplot`` (they are dropped from pyplot's
    registry); figures built with ``Figure()`` are freed when unreferenced. Returns ``path``.
    """
    if mlflow.active_run() is None:
        raise RuntimeError(
            "log_figure() needs an active MLflow run; call it inside `with mlflow.start_run():`"
        )
    try:
        mlflow.log_figure(fig, path)
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close(fig)
    return path


def stage_spans(history: Sequence[Mapping[str, Any]]) -> list[tuple[int, str, float, float]]:
    """Consecutive epochs of one stage as ``(stage_index, stage_name, x_start, x_end)``.

    Spans cover ``[first_epoch - 0.5, last_epoch + 0.5]`` so adjacent stages touch. Records
    without ``stage_index`` give no span.
    """
    spans: list[tuple[int, str, float, float]] = []
    for record in history:
        if record.get("stage_index") is None:
            continue
        index, epoch = int(record["stage_index"]), float(record["epoch"])
        name = str(record.get("stage_name") or f"stage {index}")
        if spans and spans[-1][0] == index:
            spans[-1] = (index, spans[-1][1], spans[-1][2], epoch + 0.5)
        else:
            spans.append((index, name, epoch - 0.5, epoch + 0.5))
    return spans


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for record in history:
        value = record.get(key)
        if value is None:
            continue
        value = float(value)
        if math.isfinite(value):
            xs.append(float(record["epoch"]))
            ys.append(value)
    return xs, ys


def plot_curves(history: Sequence[Mapping[str, Any]], keys: Iterable[str], title: str) -> Figure | None:
    """Curves of ``keys`` vs epoch over shaded, labelled stage spans; None if no key has data."""
    if any("epoch" not in record for record in history):
        raise ValueError("every history record needs an 'epoch' entry, e.g. {'epoch': 0, 'train/loss': 1.2}")
    series = {key: _series(history, key) for key in keys}
    series = {key: xy for key, xy in series.items() if xy[0]}
    if not series:
        return None
    fig = Figure(figsize=(7.0, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (_, name, x0, x1) in enumerate(stage_spans(history)):
        ax.axvspan(x0, x1, color=f"C{i % 10}", alpha=0.08, linewidth=0)
        if i:
            ax.axvline(x0, color="0.5", linestyle="--", linewidth=0.8)
        ax.text(
            (x0 + x1) / 2,
            0.98,
            name,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="top",
            fontsize=8,
            color="0.3",
        )
    for key, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=key)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


def plot_artifact_path(key: str) -> str:
    """Artifact path of the curve for ``key``: ``"val/presence/accuracy"`` -> ``plots/val_presence_accuracy.png``."""
    return f"{PLOTS_DIR}/{_UNSAFE_FILE_CHARS.sub('_', key).strip('_')}.png"


def log_history_plots(history: Sequence[Mapping[str, Any]], metric_keys: Iterable[str] = ()) -> list[str]:
    """Log ``plots/loss.png`` (train/loss + val/loss) and one PNG per metric key; return their paths.

    Keys without any finite value are skipped (logged at INFO), so the returned list says what
    was actually written.
    """
    if mlflow.active_run() is None:
        raise RuntimeError(
            "log_history_plots() needs an active MLflow run; call it inside `with mlflow.start_run():`"
        )
    logged: list[str] = []
    jobs = [(f"{PLOTS_DIR}/loss.png", LOSS_KEYS, "loss")]
    jobs += [
        (plot_artifact_path(key), (key,), key) for key in dict.fromkeys(metric_keys) if key not in LOSS_KEYS
    ]
    for path, keys, title in jobs:
        fig = plot_curves(history, keys, title)
        if fig is None:
            log.info("no finite values for %s in history; %s not written", ", ".join(keys), path)
            continue
        logged.append(log_figure(fig, path))
    return logged
