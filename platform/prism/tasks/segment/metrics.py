"""IoU, Dice, pixel accuracy, precision, recall and F1 of binary (prompted-object) masks: pooled over every
pixel of the set and averaged over images, from counts and per-image sums that add across workers."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from prism.tasks.base import MetricAccumulator

__all__ = ["IGNORE_INDEX", "METRICS", "SegmentationMetrics", "binary_ratios"]

IGNORE_INDEX = 255
"""The target value of void pixels: left out of every count."""
METRICS = ("iou", "dice", "accuracy", "precision", "recall", "f1")
"""The metrics reported, each pooled (``val/iou``) and as a mean over images (``val/image/iou``)."""
COUNTS = ("tp", "fp", "fn", "tn")
ROW_KEYS = ("id", "prompt", *METRICS, "pixels")


def binary_ratios(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor
                  ) -> dict[str, torch.Tensor]:
    """The :data:`METRICS` (float64, the counts' shape) of pixel counts of one or many masks.

    A ratio 0/0 is 1 when the prediction and the target are both empty (``tp + fp + fn == 0``: nothing to
    find and nothing claimed, a perfect answer) and 0 otherwise, i.e. scikit-learn's ``zero_division=1`` in
    the first case and ``zero_division=0`` in the second. Accuracy is NaN where there is no pixel at all.
    """
    tp, fp, fn, tn = (c.double() for c in (tp, fp, fn, tn))
    empty = (tp + fp + fn == 0).double()

    def ratio(num: torch.Tensor, den: torch.Tensor, zero: torch.Tensor | float) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp_min(1), torch.as_tensor(zero, dtype=torch.float64))

    dice = ratio(2 * tp, 2 * tp + fp + fn, empty)
    return {"iou": ratio(tp, tp + fp + fn, empty), "dice": dice,
            "accuracy": ratio(tp + tn, tp + fp + fn + tn, float("nan")),
            "precision": ratio(tp, tp + fp, empty), "recall": ratio(tp, tp + fn, empty), "f1": dice}


class SegmentationMetrics(MetricAccumulator):
    """Metrics of predicted binary masks against targets with void pixels.

    ``update(predictions, targets)`` takes, for B images:

    - ``predictions["masks"]``: float ``(B, h, w)`` logits; a pixel is foreground where
      ``sigmoid(logit) >= threshold``. Logits of another size than the target are first resized bilinearly
      (``align_corners=False``) to the target's ``(H, W)``.
    - ``targets["mask"]``: uint8 ``(B, H, W)``, 0 = background, 1 = the object, 255 = void (ignored: in no
      count); optional ``targets["id"]`` and ``targets["prompt"]``: lists of B strings, kept with the rows
      that :meth:`export` gives.

    State (summable, 0-d tensors): ``tp``, ``fp``, ``fn``, ``tn`` int64 pixel counts over every image;
    ``image/<metric>`` float64 sums of each image's metric and ``images`` int64, the images summed. An
    image with no non-void pixel has no metrics of its own and is left out of the image means.

    Reported by :meth:`compute`: ``iou``, ``dice``, ``accuracy``, ``precision``, ``recall``, ``f1`` of the
    pooled counts (what scikit-learn's ``jaccard_score``, ``f1_score``… give on every non-void pixel of the
    set, flattened), and ``image/<metric>``, the mean over images of the same metrics computed per image.
    Dice and F1 of binary masks are the same number (``2 tp / (2 tp + fp + fn)``). A ratio 0/0 is 1 when
    the prediction and the target are both empty, else 0 (see :func:`binary_ratios`): an empty prediction
    on an empty target scores 1 everywhere, an empty prediction on an object scores 0. Every value is NaN
    when nothing was seen.

    The first ``keep_images`` images that this accumulator saw (this worker's, in order) are also kept as
    rows for :meth:`export` and :meth:`per_image_table`; the rows are not part of the state, so they are not
    merged across workers.
    """

    summable: ClassVar[bool] = True

    def __init__(self, threshold: float = 0.5, keep_images: int = 0):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}")
        if keep_images < 0:
            raise ValueError(f"keep_images must be >= 0 (0 keeps no per-image rows), got {keep_images!r}")
        self.threshold = float(threshold)
        self.keep_images = int(keep_images)
        self._state = {name: torch.zeros((), dtype=dtype) for name, dtype in self._dtypes().items()}
        self.rows: list[dict[str, Any]] = []

    @staticmethod
    def _dtypes() -> dict[str, torch.dtype]:
        sums = dict.fromkeys((f"image/{m}" for m in METRICS), torch.float64)
        return {**dict.fromkeys(COUNTS, torch.int64), **sums, "images": torch.int64}

    def update(self, predictions: dict[str, Any], targets: dict[str, Any]) -> None:
        """Add one batch (shapes in the class docstring)."""
        mask = torch.as_tensor(targets["mask"])
        logits = torch.as_tensor(predictions["masks"]).detach().float()
        if mask.dim() != 3 or logits.dim() != 3 or logits.shape[0] != mask.shape[0]:
            raise ValueError(f"predictions['masks'] must be (B, h, w) and targets['mask'] (B, H, W), got "
                             f"{tuple(logits.shape)} and {tuple(mask.shape)}")
        n = mask.shape[0]
        if n == 0:
            return
        mask = mask.to(logits.device)
        obj, back = mask == 1, mask == 0
        known = obj | back | (mask == IGNORE_INDEX)
        if not bool(known.all()):
            found = torch.unique(mask[~known])[:10].tolist()
            raise ValueError(f"targets['mask'] may hold 0 (background), 1 (object) and {IGNORE_INDEX} (void) "
                             f"only, found {found}: map class indices to the prompted object first")
        if logits.shape[-2:] != mask.shape[-2:]:
            logits = F.interpolate(logits[:, None], size=tuple(mask.shape[-2:]), mode="bilinear",
                                   align_corners=False)[:, 0]
        fg = logits.sigmoid() >= self.threshold
        counts = {"tp": fg & obj, "fp": fg & back, "fn": ~fg & obj, "tn": ~fg & back}
        counts = {k: v.sum(dim=(1, 2)).cpu().to(torch.int64) for k, v in counts.items()}
        for k, v in counts.items():
            self._state[k] += v.sum()
        pixels = sum(counts.values())
        scored = pixels > 0
        per_image = binary_ratios(**counts)
        for m, v in per_image.items():
            self._state[f"image/{m}"] += v[scored].sum()
        self._state["images"] += scored.sum()
        self._keep_rows(targets, per_image, pixels, scored, n)

    def _keep_rows(self, targets: dict[str, Any], per_image: dict[str, torch.Tensor], pixels: torch.Tensor,
                   scored: torch.Tensor, n: int) -> None:
        take = min(n, self.keep_images - len(self.rows))
        if take <= 0:
            return
        for name in ("id", "prompt"):
            if name in targets and len(targets[name]) != n:
                raise ValueError(f"targets['{name}'] must list one string per image ({n}), got "
                                 f"{len(targets[name])}")
        values = {m: v[:take].tolist() for m, v in per_image.items()}
        for i in range(take):
            row: dict[str, Any] = {name: (str(targets[name][i]) if name in targets else None)
                                   for name in ("id", "prompt")}
            row.update({m: (values[m][i] if bool(scored[i]) else None) for m in METRICS})
            row["pixels"] = int(pixels[i])
            self.rows.append(row)

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self._state.items()}

    def merge(self, state: dict[str, Any]) -> None:
        expected = self._dtypes()
        if set(state) != set(expected):
            missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
            raise ValueError(f"not a SegmentationMetrics state: missing {missing}, unexpected {extra}")
        for k, dtype in expected.items():
            self._state[k] += torch.as_tensor(state[k]).detach().cpu().to(dtype).reshape(())

    def counts(self) -> dict[str, int]:
        """The pooled pixel counts ``tp, fp, fn, tn`` (non-void pixels of every image seen or merged)."""
        return {k: int(self._state[k]) for k in COUNTS}

    def compute(self, prefix: str = "val/") -> dict[str, float]:
        nan = float("nan")
        counts = {k: self._state[k] for k in COUNTS}
        seen = sum(int(v) for v in counts.values()) > 0
        pooled = binary_ratios(**counts)
        out = {f"{prefix}{m}": float(pooled[m]) if seen else nan for m in METRICS}
        images = int(self._state["images"])
        out.update({f"{prefix}image/{m}": float(self._state[f"image/{m}"]) / images if images else nan
                    for m in METRICS})
        return out

    def export(self) -> dict[str, Any]:
        """``{"threshold", "counts": {tp, fp, fn, tn}, "images", "per_image": [row, …]}``: a row per kept
        image (this worker's first ``keep_images``) with ``id``, ``prompt`` (None when not given), the
        :data:`METRICS` (None for an image without a non-void pixel) and ``pixels`` (its non-void pixels)."""
        return {"threshold": self.threshold, "counts": self.counts(), "images": int(self._state["images"]),
                "per_image": [dict(r) for r in self.rows]}

    def per_image_table(self):
        """The kept rows of :meth:`export` as a DataFrame, columns ``id, prompt, <METRICS>, pixels``."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(ROW_KEYS))
