"""Rendered synthetic sketches for the classify learning tests (QuickDraw's format, drawn by the generator)."""

from __future__ import annotations

import numpy as np

from prism.data.quickdraw import render_drawing
from prism.data.synth.sketches import sketch_record


def drawings(classes: list[str], per_class: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 3) uint8 renders and (N,) labels (index in ``classes``); ``seed`` picks other drawings
    of the same classes."""
    images, labels = [], []
    for i in range(per_class):
        for c, name in enumerate(classes):
            strokes = [np.array(s, dtype=np.float64).T for s in sketch_record(name, i, seed)["drawing"]]
            images.append(np.asarray(render_drawing(strokes, size, line_width=1.5)))
            labels.append(c)
    return np.stack(images), np.array(labels)
