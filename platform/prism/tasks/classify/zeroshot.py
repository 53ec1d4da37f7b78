"""Zero-shot classification of classes never trained on: CLIP text embeddings or class prototypes.

Both give a (K, D) matrix of unit class embeddings; images are scored by cosine similarity with it:

    text        class names through prompt templates into a frozen CLIP text tower, averaged over templates
                and re-normalised — open_clip's `build_zero_shot_classifier`, reproduced exactly (tested);
                scored against the image tower's projected embedding (`backbone(x)["embedding"]`).
    prototypes  k support images per class -> mean of their normalised embeddings, re-normalised (any
                backbone: a trained head's embedding, or pooled backbone features); nearest prototype wins.

Probabilities are softmax(scale * cosine); CLIP's own scale is 100 (its learned logit_scale, exp(4.6052)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from prism.backbones.clip_text import ClipTextTower
from prism.tasks.classify.config import DEFAULT_TEMPLATES

__all__ = ["DEFAULT_TEMPLATES", "class_prototypes", "text_class_embeddings", "zero_shot_probs"]



def text_class_embeddings(tower: ClipTextTower, classes: Sequence[str],
                          templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
    """K class names x T templates ("{}" = the name) -> (K, D) unit embeddings, float32."""
    if not classes or not templates or any("{}" not in t for t in templates):
        raise ValueError(f"need class names and templates holding '{{}}'; got {list(classes)[:3]} and "
                         f"{list(templates)}")
    texts = [t.format(c) for c in classes for t in templates]
    emb = tower.encode(texts).reshape(len(classes), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1)


def class_prototypes(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, D) support embeddings with labels (N,) in 0..K-1 -> (K, D) unit prototypes; every class needs one."""
    labels = labels.long()
    counts = torch.bincount(labels, minlength=num_classes)
    if len(counts) > num_classes or (counts == 0).any():
        raise ValueError(f"every class needs support images and labels must be < {num_classes}; "
                         f"counts per class: {counts.tolist()}")
    sums = torch.zeros(num_classes, embeddings.shape[1]).index_add_(0, labels, F.normalize(embeddings.float(), dim=-1))
    return F.normalize(sums / counts[:, None], dim=-1)


def zero_shot_probs(image_embeddings: torch.Tensor, class_embeddings: torch.Tensor,
                    scale: float = 100.0) -> torch.Tensor:
    """(B, D) image embeddings, (K, D) unit class embeddings -> (B, K) softmax(scale * cosine)."""
    logits = scale * F.normalize(image_embeddings.float(), dim=-1) @ class_embeddings.float().T
    return logits.softmax(dim=-1)
