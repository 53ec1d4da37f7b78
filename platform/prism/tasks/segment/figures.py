"""Figures of a segmentation report, drawn with ``matplotlib.figure.Figure`` (no pyplot state).

- :func:`iou_histogram`: how per-image IoU spreads, one histogram per prompt (the worst rows are the ones to
  open in ``overlays/``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

__all__ = ["iou_histogram"]

PROMPTS = 10
"""Prompts drawn (those with the most rows)."""


def iou_histogram(rows: Sequence[dict[str, Any]]) -> Figure:
    """Per-image IoU (``rows``: :meth:`SegmentationMetrics.export`'s ``per_image``) binned in tenths, stacked
    per prompt, with each prompt's mean in the legend."""
    by_prompt: dict[str, list[float]] = {}
    for r in rows:
        by_prompt.setdefault(str(r["prompt"]), []).append(float(r["iou"]))
    shown = sorted(by_prompt, key=lambda p: -len(by_prompt[p]))[:PROMPTS]
    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    bins = np.linspace(0, 1, 11)
    ax.hist([by_prompt[p] for p in shown], bins=bins, stacked=True,
            label=[f"{p} (mean {np.mean(by_prompt[p]):.3f}, {len(by_prompt[p])} rows)" for p in shown])
    ax.set_xlabel("IoU of the image's mask")
    ax.set_ylabel("rows (image, prompt)")
    ax.set_title(f"per-image IoU, {len(rows)} rows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
