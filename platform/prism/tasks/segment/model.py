"""Text-prompted segmentation heads: the backbone's patch grid into SAM's mask decoder, conditioned on CLIP
text that enters the decoder as sparse prompt tokens.

::

    features["patches"] (B, h, w, C) ─ neck (1×1 conv, LN, 3×3 conv, LN: SAM's encoder neck) ─ resize → (B, D, g, g)
    inputs["text_tokens"] (B, L) ─ frozen CLIP text tower → (B, E) unit ─ text_proj → (B, T, D)  ┐
    [inputs["points"] (B, P, 2) px + "point_labels" (B, P), inputs["boxes"] (B, 4) px xyxy]       ├ sparse (B, T[+P][+2], D)
    PromptEncoder: point / box embeddings, dense "no mask" embedding, positional encoding         ┘
    BatchedMaskDecoder → {"masks": (B, 4g, 4g) logits, "iou": (B,) predicted IoU, "text": (B, E)}

``g`` is the decoder's grid (``task.decoder_grid``; SAM's is 64); masks come out at 4g and are resized to the
input by the task. The text tower lives in ``heads.frozen``: its parameters belong to no optimiser group, no
stage trains them and no LoRA reaches them (:func:`prism.adapters.stages.parameter_groups`), and it runs in
eval mode under ``no_grad``. ``text_proj`` and everything after it train.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

from prism.tasks.segment.sam_parts import build_mask_decoder, build_prompt_encoder

__all__ = ["TextPromptHeads"]


class FrozenText(nn.Module):
    """A frozen open_clip text tower: ``(B, L)`` token ids → ``(B, E)`` unit embeddings; always eval."""

    def __init__(self, tower) -> None:
        super().__init__()
        self.text = tower.model.requires_grad_(False)
        self.embedding_dim = tower.embedding_dim

    def train(self, mode: bool = True) -> FrozenText:
        return super().train(False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return F.normalize(self.text(tokens.long()).float(), dim=-1)


class TextPromptHeads(nn.Module):
    """Neck, text projection, SAM's prompt encoder and mask decoder (see the module docstring)."""

    def __init__(self, embed_dim: int, tower, sam_type: str, grid: int, image_size: int, text_tokens: int = 2):
        super().__init__()
        self.frozen = nn.ModuleDict({"text": FrozenText(tower)})
        self.prompt_encoder = build_prompt_encoder(sam_type, grid, image_size)
        self.mask_decoder = build_mask_decoder(sam_type)
        dim = self.prompt_encoder.embed_dim
        self.grid, self.dim, self.text_tokens = grid, dim, text_tokens
        self.neck = nn.Sequential(nn.Conv2d(embed_dim, dim, 1, bias=False), LayerNorm2d(dim),
                                  nn.Conv2d(dim, dim, 3, padding=1, bias=False), LayerNorm2d(dim))
        e = self.frozen["text"].embedding_dim
        self.text_proj = nn.Sequential(nn.Linear(e, dim), nn.GELU(), nn.Linear(dim, dim * text_tokens))

    def image_embeddings(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, h, w, C) patch grid → (B, D, g, g), the decoder's image embedding."""
        x = self.neck(patches.permute(0, 3, 1, 2).float())
        if x.shape[-2:] != (self.grid, self.grid):
            x = F.interpolate(x, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
        return x

    def prompt_tokens(self, text: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """(B, E) text embeddings (+ optional points / boxes of ``inputs``) → sparse tokens (B, N, D)."""
        b = text.shape[0]
        tokens = [self.text_proj(text).view(b, self.text_tokens, self.dim)]
        pe = self.prompt_encoder
        if inputs.get("points") is not None:
            tokens.append(pe._embed_points(inputs["points"].float(), inputs["point_labels"].float(),
                                           pad=inputs.get("boxes") is None))
        if inputs.get("boxes") is not None:
            tokens.append(pe._embed_boxes(inputs["boxes"].float()))
        return torch.cat(tokens, dim=1)

    def forward(self, features: dict[str, Any], inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        if "text_tokens" not in inputs:
            raise ValueError("text-prompted segmentation needs inputs['text_tokens'] (B, L): the prompt's CLIP tokens")
        src = self.image_embeddings(features["patches"])
        text = self.frozen["text"](inputs["text_tokens"])
        sparse = self.prompt_tokens(text, inputs)
        b = src.shape[0]
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, self.grid, self.grid)
        masks, iou = self.mask_decoder(image_embeddings=src, image_pe=self.prompt_encoder.get_dense_pe(),
                                       sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                       multimask_output=False)
        return {"masks": masks[:, 0], "iou": iou[:, 0], "text": text}
