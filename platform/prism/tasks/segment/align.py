"""The CLIP alignment loss of text-prompted segmentation, contrastive and never degenerate.

The predicted mask pools the decoder's image embedding into one region embedding per row, projected into CLIP's
text space; the loss asks it to be nearer its own prompt's CLIP embedding than every other candidate: the
batch's other prompts **and every class prompt of the task** (InfoNCE over the candidates, temperature τ)::

    region (B, E) unit     text (B, E) unit (the rows' prompts)     class_text (K, E) unit (task.classes)
    candidates = class_text ∪ the batch's prompts not among them (duplicates merged, cosine > 1 - 1e-5)
    loss = mean_i  CE( region_i · candidatesᵀ / τ,  index of text_i )

A loss contrasting only the prompts of a batch (the research version) has one candidate at batch size 1 and is
exactly 0 there; the class prompts are negatives at any batch size, so this one is not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["alignment_loss", "region_embedding"]

SAME = 1 - 1e-5
"""Cosine above which two prompt embeddings are one candidate."""


def region_embedding(image_embedding: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """(B, D, g, g) image embedding pooled by the sigmoid of (B, H, W) mask logits (resized to g) → (B, D)."""
    g = image_embedding.shape[-2:]
    weights = F.interpolate(mask_logits[:, None].float(), size=g, mode="bilinear", align_corners=False).sigmoid()
    return (image_embedding * weights).flatten(2).sum(-1) / weights.flatten(1).sum(-1, keepdim=True).clamp_min(1e-6)


def alignment_loss(region: torch.Tensor, text: torch.Tensor, class_text: torch.Tensor,
                   temperature: float = 0.07) -> torch.Tensor:
    """InfoNCE of the module docstring: ``region`` (B, E), ``text`` (B, E), ``class_text`` (K, E), all unit
    vectors → a scalar; > 0 whenever there are two candidates or more (K ≥ 2 suffices at B = 1)."""
    candidates = [c for c in class_text]
    for t in text:
        if not any(float(t @ c) > SAME for c in candidates):
            candidates.append(t)
    cand = torch.stack(candidates).to(region.dtype)
    target = (text.to(cand.dtype) @ cand.T).argmax(dim=1)
    logits = F.normalize(region, dim=-1) @ cand.T / temperature
    return F.cross_entropy(logits, target)
