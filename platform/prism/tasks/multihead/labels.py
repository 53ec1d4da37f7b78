"""Label tables → integer targets, with conditional heads masked to ``-1`` (ignored, never a class)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from prism.tasks.multihead.config import NA, MultiHeadTaskConfig

__all__ = ["IGNORE", "encode_labels", "is_missing", "unknown_labels"]

IGNORE = -1


def is_missing(value: object) -> bool:
    """Empty cell, NaN or ``na``: the label is not given."""
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return str(value).strip() in ("", NA)


def unknown_labels(cfg: MultiHeadTaskConfig, df: pd.DataFrame) -> pd.Series:
    """Per row, a message naming unknown labels ('' for a clean row)."""
    msgs = pd.Series([""] * len(df), index=df.index, dtype=object)
    for h in cfg.heads:
        col = df[h.name]
        known = set(h.classes)
        bad = col.map(lambda v, known=known: not is_missing(v) and str(v).strip() not in known)
        for idx in df.index[bad.to_numpy()]:
            msgs[idx] += (f"{h.name}={str(df.at[idx, h.name]).strip()!r} is not one of {h.classes}; ")
    return msgs


def encode_labels(cfg: MultiHeadTaskConfig, df: pd.DataFrame) -> dict[str, np.ndarray]:
    """``{"y_<head>": int64 (N,)}``: class index, or ``IGNORE`` where missing or the condition fails.

    A conditional head's target is ignored wherever its parent's label is missing or not in the allowed
    set, even if the table gives a label there.
    """
    raw: dict[str, np.ndarray] = {}
    for h in cfg.heads:
        index = {c: i for i, c in enumerate(h.classes)}
        raw[h.name] = np.array(
            [IGNORE if is_missing(v) else index[str(v).strip()] for v in df[h.name]], dtype=np.int64
        )
    out: dict[str, np.ndarray] = {}
    for h in cfg.heads:
        y = raw[h.name].copy()
        for parent, allowed in (h.only_when or {}).items():
            parent_classes = next(p.classes for p in cfg.heads if p.name == parent)
            allowed_idx = np.array([parent_classes.index(c) for c in allowed], dtype=np.int64)
            y[~np.isin(raw[parent], allowed_idx)] = IGNORE
        out[f"y_{h.name}"] = y
    return out
