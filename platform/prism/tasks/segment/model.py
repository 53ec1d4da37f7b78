"""Text-prompted segmentation heads: the backbone's patch grid into SAM's mask decoder, conditioned on CLIP
text that enters the decoder as sparse prompt tokens.

::

    features["patches"] (B, h, w, C) ─ neck (1×1 conv, LN, 3×3 conv, LN: SAM's encoder neck) ─ resize → (B, D, g, g)
    inputs["text_tokens"] (B, L) ─ frozen CLIP text tower → (B, E) unit ─ text_proj → (B, T, D)  ┐
    [inputs["points"] (B, P, 2) px + "point_labels" (B, P), inputs["boxes"] (B, 4) px xyxy]       ├ sparse (B, T[+P][+2], D)
    (point labels: prism.tasks.segment.geometry; a model trained with prompt jitter pads absent ones)
    PromptEncoder: point / box embeddings, dense "no mask" embedding, positional encoding         ┘
    BatchedMaskDecoder → {"masks": (B, 4g, 4g) logits, "iou": (B,) predicted IoU, "text": (B, E)}
    with a teacher (distillation, training only): + "patches" (B, h, w, C) adapted, "teacher_patches" frozen
    with class_prompts (the alignment loss on): + "region": (B, E) the mask-pooled image embedding projected to
    CLIP's space (prism.tasks.segment.align), "class_text": (K, E) the class prompts' embeddings

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


class FrozenBackbone(nn.Module):
    """A frozen copy of the backbone: ``(B, 3, S, S)`` normalised images → ``(B, h, w, C)`` patch tokens."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenBackbone:
        return super().train(False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.backbone(image)["patches"]


class TextPromptHeads(nn.Module):
    """Neck, text projection, SAM's prompt encoder and mask decoder (see the module docstring)."""

    def __init__(self, embed_dim: int, tower, sam_type: str, grid: int, image_size: int, text_tokens: int = 2,
                 class_prompts: list[str] | None = None, geometry_slots: int = 0, teacher: nn.Module | None = None):
        super().__init__()
        self.geometry_slots = geometry_slots
        self.frozen = nn.ModuleDict({"text": FrozenText(tower)})
        self.prompt_encoder = build_prompt_encoder(sam_type, grid, image_size)
        self.mask_decoder = build_mask_decoder(sam_type)
        dim = self.prompt_encoder.embed_dim
        self.grid, self.dim, self.text_tokens = grid, dim, text_tokens
        self.neck = nn.Sequential(nn.Conv2d(embed_dim, dim, 1, bias=False), LayerNorm2d(dim),
                                  nn.Conv2d(dim, dim, 3, padding=1, bias=False), LayerNorm2d(dim))
        e = self.frozen["text"].embedding_dim
        self.text_proj = nn.Sequential(nn.Linear(e, dim), nn.GELU(), nn.Linear(dim, dim * text_tokens))
        if teacher is not None:  # feature distillation: the backbone as its weights give it, frozen, always eval
            self.frozen["teacher"] = FrozenBackbone(teacher)
        self.region_proj = None
        if class_prompts:  # the alignment loss: only then built (an unused parameter would stall DDP)
            self.region_proj = nn.Linear(dim, e)
            # the class prompts' frozen embeddings: rebuilt from the tower, never saved (hence under frozen.)
            self.frozen["text"].register_buffer("classes", self.frozen["text"](tower.tokenizer(list(class_prompts))),
                                                persistent=False)

    def image_embeddings(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, h, w, C) patch grid → (B, D, g, g), the decoder's image embedding."""
        x = self.neck(patches.permute(0, 3, 1, 2).float())
        if x.shape[-2:] != (self.grid, self.grid):
            x = F.interpolate(x, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
        return x

    def prompt_tokens(self, text: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """(B, E) text embeddings (+ optional points / boxes of ``inputs``) → sparse tokens (B, N, D).

        Points are labelled as :mod:`prism.tasks.segment.geometry` labels them (-1 none, 0 / 1 negative /
        positive, 2 / 3 box corners); ``boxes`` (B, 4) xyxy become two corner points. As SAM does, points
        without a box get one "not a point" token more. A model trained with prompt jitter (``geometry_slots``
        > 0) gets that many "not a point" tokens when the input has no points, what it saw for rows without."""
        from prism.tasks.segment.geometry import NOT_A_POINT, geometry_tokens

        b = text.shape[0]
        tokens = [self.text_proj(text).view(b, self.text_tokens, self.dim)]
        points, labels = [], []
        if inputs.get("points") is not None:
            points.append(inputs["points"].float())
            labels.append(inputs["point_labels"].long())
            if inputs.get("boxes") is None and self.geometry_slots == 0:
                points.append(text.new_zeros(b, 1, 2))
                labels.append(torch.full((b, 1), NOT_A_POINT, dtype=torch.long, device=text.device))
        if inputs.get("boxes") is not None:
            points.append(inputs["boxes"].float().reshape(b, 2, 2))
            labels.append(torch.tensor([[2, 3]], device=text.device).expand(b, 2))
        if not points and self.geometry_slots:
            points.append(text.new_zeros(b, self.geometry_slots, 2))
            labels.append(torch.full((b, self.geometry_slots), NOT_A_POINT, dtype=torch.long, device=text.device))
        if points:
            tokens.append(geometry_tokens(self.prompt_encoder, torch.cat(points, 1), torch.cat(labels, 1)))
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
        out = {"masks": masks[:, 0], "iou": iou[:, 0], "text": text}
        if "teacher" in self.frozen and self.training:
            out["patches"] = features["patches"]
            out["teacher_patches"] = self.frozen["teacher"](inputs["image"])
        if self.region_proj is not None:
            from prism.tasks.segment.align import region_embedding

            out["region"] = F.normalize(self.region_proj(region_embedding(src, out["masks"])), dim=-1)
            out["class_text"] = self.frozen["text"].classes
        return out
