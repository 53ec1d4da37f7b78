"""Plot of each trial's best metric against every searched hyperparameter (one panel per key).

Built with the object-oriented Matplotlib API on an explicit Agg canvas (no ``pyplot``), like
:mod:`prism.tracking.plots`. Numeric keys are scatter plots (log x for ``loguniform`` keys); anything
else (choices of strings, lists, stage plans) is placed on categorical ticks. Marker colour is the
trial's status, so trials ASHA stopped early are told apart from those that ran their whole plan.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

__all__ = ["plot_metric_vs_params"]

STATUS_STYLE = {"completed": ("C0", "o"), "stopped": ("C1", "v"), "error": ("C3", "x")}


def _numeric(values: pd.Series) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_metric_vs_params(table: pd.DataFrame, keys: list[str], value_column: str, metric: str,
                          log_keys: Iterable[str] = ()) -> Figure:
    """One panel per key of ``keys``: ``table[value_column]`` (best metric per trial) against the key's value.

    ``table`` is :func:`prism.tune.results.trial_table`'s output; rows without a finite value are left out.
    """
    log_keys = set(log_keys)
    rows = table[table[value_column].map(lambda v: v is not None and math.isfinite(float(v)))]
    ncols = min(len(keys), 3)
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, key in zip(axes, keys, strict=False):
        values = rows[key]
        if _numeric(values):
            x = values.astype(float)
            if key in log_keys:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short decade overlap
        else:
            labels = list(dict.fromkeys(str(v) for v in values))
            x = values.map(lambda v, labels=labels: labels.index(str(v)))
            ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        for status, (color, marker) in STATUS_STYLE.items():
            mask = rows["status"] == status
            if mask.any():
                ax.scatter(x[mask], rows.loc[mask, value_column], c=color, marker=marker, s=36, label=status)
        ax.set_xlabel(key)
        ax.set_ylabel(f"best {metric}")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    legend = {}
    for ax in axes[:len(keys)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=len(legend), fontsize=8)
    fig.suptitle(f"best {metric} per trial\n({len(rows)} of {len(table)} trials with a value)", fontsize=10)
    return fig
