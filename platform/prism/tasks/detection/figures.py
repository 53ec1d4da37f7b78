"""Figures of a detection report (:func:`~prism.tasks.detection.coco_report.detection_report`), drawn with
``matplotlib.figure.Figure`` (no pyplot state), and images with their boxes drawn (PIL).

- :func:`pr_figure`: precision–recall at IoU 0.5 and 0.75, all classes (bold) and up to 10 of them;
- :func:`class_ap_figure`: AP and AP50 per class, sorted;
- :func:`confidence_figure`: how confident true and false positives are (matched at IoU 0.5);
- :func:`class_counts_figure`: ground-truth boxes vs predicted boxes per class;
- :func:`draw_detections`: an image with its ground truth (green) and detections (coloured by class, scored).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

__all__ = ["class_ap_figure", "class_counts_figure", "confidence_figure", "draw_detections", "pr_figure"]

CURVES = 10
"""Per-class curves drawn beside the mean (the classes with most ground truth)."""


def _series(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def pr_figure(report: dict[str, Any]) -> Figure:
    """Precision vs recall at IoU 0.5 and 0.75: the mean over classes (bold) and the ``CURVES`` classes with
    the most ground truth; each labelled with its AP at that IoU."""
    pr = report["pr"]
    recall = np.asarray(pr["recall"])
    per_class = sorted(report["per_class"], key=lambda c: -c["ground_truth"])[:CURVES]
    fig = Figure(figsize=(11, 4.4), dpi=110)
    for i, (key, iou, ap) in enumerate((("iou50", "0.5", "AP50"), ("iou75", "0.75", "AP75"))):
        ax = fig.add_subplot(1, 2, i + 1)
        curves = pr.get(key)
        if curves is None:
            ax.text(0.5, 0.5, "no detections", ha="center", va="center", transform=ax.transAxes)
        else:
            for c in per_class:
                ax.plot(recall, _series(curves[str(c["category_id"])]), lw=1, alpha=0.75,
                        label=f"{c['category']} ({(c[ap] or 0):.2f})")
            ax.plot(recall, _series(curves["all"]), lw=2.5, color="black",
                    label=f"all classes ({report['stats'][ap]:.2f})")
            ax.legend(fontsize=7, loc="lower left")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=f"IoU {iou}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"precision–recall ({report['n_images']} images, {report['n_detections']} detections)")
    fig.tight_layout()
    return fig


def class_ap_figure(report: dict[str, Any]) -> Figure:
    """Horizontal bars of AP (0.5:0.95) and AP50 per class, best on top; classes without ground truth left out."""
    rows = sorted((c for c in report["per_class"] if c["AP"] is not None), key=lambda c: c["AP"])
    fig = Figure(figsize=(7.5, 1.4 + 0.3 * max(1, len(rows))), dpi=110)
    ax = fig.add_subplot(111)
    if not rows:
        ax.text(0.5, 0.5, "no class with ground truth was detected", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
    else:
        y = np.arange(len(rows))
        ax.barh(y + 0.2, [c["AP50"] or 0 for c in rows], height=0.4, color="tab:orange", label="AP50")
        ax.barh(y - 0.2, [c["AP"] for c in rows], height=0.4, color="tab:blue", label="AP (0.5:0.95)")
        ax.set_yticks(y, [f"{c['category']} (n={c['ground_truth']})" for c in rows], fontsize=8)
        ax.axvline(report["stats"]["AP"], color="tab:blue", ls="--", lw=1)
        ax.set_xlim(0, 1)
        ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"AP per class (mean AP {report['stats']['AP']:.3f}, dashed)")
    fig.tight_layout()
    return fig


def confidence_figure(report: dict[str, Any]) -> Figure:
    """Histograms of detection scores, overlaid: matched to a ground-truth box at IoU ≥ 0.5 (true positives)
    or not (false positives); a log count axis, since a ranked detector keeps many low-scoring boxes."""
    c = report["confidence"]
    fig = Figure(figsize=(6.4, 3.6), dpi=110)
    ax = fig.add_subplot(111)
    ax.stairs(c["fp"], c["edges"], fill=True, color="tab:red", alpha=0.45, label=f"false positive ({sum(c['fp'])})")
    ax.stairs(c["tp"], c["edges"], fill=True, color="tab:green", alpha=0.55,
              label=f"true positive, IoU ≥ 0.5 ({sum(c['tp'])})")
    ax.set_yscale("symlog", linthresh=1)
    ax.axvline(report["score_threshold"], color="black", ls=":", lw=1, label=f"threshold {report['score_threshold']:g}")
    ax.set(xlabel="score", ylabel="detections", xlim=(0, 1), title="detection confidence")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def class_counts_figure(report: dict[str, Any]) -> Figure:
    """Grouped bars per class: ground-truth boxes vs detections scoring ≥ the report's threshold."""
    rows = report["per_class"]
    x = np.arange(len(rows))
    fig = Figure(figsize=(max(6.4, 0.45 * len(rows) + 2), 3.8), dpi=110)
    ax = fig.add_subplot(111)
    ax.bar(x - 0.2, [c["ground_truth"] for c in rows], width=0.4, color="tab:green", label="ground truth")
    ax.bar(x + 0.2, [c["predicted"] for c in rows], width=0.4, color="tab:purple",
           label=f"predicted (score ≥ {report['score_threshold']:g})")
    ax.set_xticks(x, [c["category"] for c in rows], rotation=45 if len(rows) > 8 else 0, ha="right" if len(rows) > 8
                  else "center", fontsize=8)
    ax.set(ylabel="boxes", title=f"boxes per class ({report['n_images']} images)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


PALETTE = [(230, 25, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230),
           (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


def draw_detections(image: Image.Image, detections: Sequence[dict[str, Any]],
                    ground_truth: Sequence[dict[str, Any]] = (), names: dict[int, str] | None = None,
                    min_side: int = 320) -> Image.Image:
    """``image`` (scaled up so its shorter side is ≥ ``min_side``) with ``ground_truth`` boxes in green and
    ``detections`` (``bbox`` pixel xywh, ``category_id``, ``score``) in a colour per class, labelled."""
    img = image.convert("RGB")
    scale = max(1.0, min_side / min(img.size))
    if scale > 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    names = names or {}
    for g in ground_truth:
        x, y, w, h = (v * scale for v in g["bbox"])
        draw.rectangle([x, y, x + w, y + h], outline=(0, 200, 0), width=2)
    for d in detections:
        cid = int(d["category_id"])
        colour = PALETTE[cid % len(PALETTE)]
        x, y, w, h = (v * scale for v in d["bbox"])
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=2)
        label = f"{names.get(cid, cid)} {d['score']:.2f}"
        tw = draw.textlength(label)
        top = max(0.0, y - 12)
        draw.rectangle([x, top, x + tw + 4, top + 12], fill=colour)
        draw.text((x + 2, top), label, fill=(255, 255, 255))
    return img
