"""Point and box prompts beside the text: their tokens, and the random prompts training draws from the masks.

Every geometric prompt is a labelled point, as SAM's prompt encoder labels them: 1 a positive point, 0 a
negative one, 2 / 3 a box's top-left / bottom-right corner, -1 no prompt (SAM's "not a point" embedding), so
a batch mixes rows with and without points and boxes in one (B, N, 2) tensor::

    points (B, N, 2) input pixels (x, y)   labels (B, N) in {-1, 0, 1, 2, 3}   →   tokens (B, N, D)

:func:`geometry_tokens` is SAM's ``PromptEncoder._embed_points`` and ``_embed_boxes`` in one (tested equal).
:func:`jitter_prompts` draws the training prompts (``task.jitter``): per row, with probability ``point_prob``
up to ``points`` positive points inside the object's mask, with probability ``box_prob`` the mask's box with
each edge moved by up to ``box_jitter`` of the box's side; absent prompts are -1 slots. A model trained so
answers from the text alone (every slot -1, what inference without points sends) and uses points / boxes when
given them.
"""

from __future__ import annotations

import numpy as np
import torch
from segment_anything.modeling import PromptEncoder

__all__ = ["geometry_tokens", "jitter_prompts"]

NOT_A_POINT, NEGATIVE, POSITIVE, TOP_LEFT, BOTTOM_RIGHT = -1, 0, 1, 2, 3


def geometry_tokens(pe: PromptEncoder, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, N, 2) points in input pixels and (B, N) labels → (B, N, D) sparse prompt tokens."""
    labels = labels.long()
    emb = pe.pe_layer.forward_with_coords(points.float() + 0.5, pe.input_image_size)
    emb = torch.where((labels == NOT_A_POINT)[..., None], pe.not_a_point_embed.weight.to(emb.dtype), emb)
    for label in (NEGATIVE, POSITIVE, TOP_LEFT, BOTTOM_RIGHT):
        emb = emb + (labels == label)[..., None].to(emb.dtype) * pe.point_embeddings[label].weight.to(emb.dtype)
    return emb


def jitter_prompts(masks: np.ndarray, points: int, point_prob: float, box_prob: float, box_jitter: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(B, S, S) uint8 object masks (1 object, 0 background, 255 void) → points (B, N, 2) float32 and labels
    (B, N) int64, N = ``points`` (+ 2 when ``box_prob`` > 0); see the module docstring. A row whose mask is
    empty gets no prompt."""
    b, s = masks.shape[0], masks.shape[-1]
    n = points + (2 if box_prob > 0 else 0)
    xy = np.zeros((b, n, 2), dtype=np.float32)
    lab = np.full((b, n), NOT_A_POINT, dtype=np.int64)
    for i in range(b):
        ys, xs = np.nonzero(masks[i] == 1)
        if len(xs) == 0:
            continue
        if points and rng.random() < point_prob:
            k = int(rng.integers(1, points + 1))
            pick = rng.choice(len(xs), size=min(k, len(xs)), replace=False)
            xy[i, :len(pick)] = np.stack([xs[pick], ys[pick]], 1)
            lab[i, :len(pick)] = POSITIVE
        if box_prob > 0 and rng.random() < box_prob:
            x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())
            w, h = x1 - x0 + 1, y1 - y0 + 1
            move = rng.uniform(-box_jitter, box_jitter, 4) * np.array([w, h, w, h])
            box = np.clip(np.array([x0, y0, x1, y1]) + move, 0, s - 1)
            xy[i, points:] = [[min(box[0], box[2]), min(box[1], box[3])], [max(box[0], box[2]), max(box[1], box[3])]]
            lab[i, points:] = [TOP_LEFT, BOTTOM_RIGHT]
    return xy, lab
