"""SAM's prompt encoder and mask decoder, built as segment-anything builds them and loadable from an official
checkpoint file by their own keys.

``vit_b``, ``vit_l`` and ``vit_h`` differ only in their image encoder: all three share one prompt encoder and
mask decoder (256 channels, a two-way transformer of depth 2 with 8 heads and MLP 2048, 3 + 1 mask tokens),
so :data:`SAM_DECODERS` holds one entry for the three, and ``tiny`` (32 channels) for tests. The image
embedding grid is the decoder's input grid (SAM's is 64 × 64 for 1024 px): here whatever grid the
projection of the backbone's patches is upsampled to.

:func:`load_sam_parts` reads ``prompt_encoder.*`` and ``mask_decoder.*`` from a SAM checkpoint
(``sam_vit_b_01ec64.pth`` …, a plain state dict) and loads each part strictly: a missing or unexpected key
names itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import torch
from segment_anything.modeling import PromptEncoder, TwoWayTransformer

from prism.tasks.segment.decoder import BatchedMaskDecoder

__all__ = ["SAM_DECODERS", "SamDecoderSpec", "build_mask_decoder", "build_prompt_encoder", "load_sam_parts"]


@dataclass(frozen=True)
class SamDecoderSpec:
    """The sizes of one SAM prompt encoder + mask decoder."""

    dim: int = 256
    depth: int = 2
    heads: int = 8
    mlp: int = 2048
    mask_in_chans: int = 16
    multimask: int = 3
    iou_hidden: int = 256


_OFFICIAL = SamDecoderSpec()
SAM_DECODERS: dict[str, SamDecoderSpec] = {
    "vit_b": _OFFICIAL, "vit_l": _OFFICIAL, "vit_h": _OFFICIAL,
    "tiny": SamDecoderSpec(dim=32, depth=2, heads=2, mlp=64, mask_in_chans=8, iou_hidden=32),
}


def _spec(sam_type: str) -> SamDecoderSpec:
    if sam_type not in SAM_DECODERS:
        raise ValueError(f"unknown SAM type {sam_type!r}; known: {', '.join(sorted(SAM_DECODERS))}")
    return SAM_DECODERS[sam_type]


def build_prompt_encoder(sam_type: str, grid: int, image_size: int) -> PromptEncoder:
    """SAM's ``PromptEncoder`` for an image embedding of ``grid`` × ``grid`` cells over ``image_size`` px
    inputs (point and box prompts are in input pixels)."""
    s = _spec(sam_type)
    return PromptEncoder(embed_dim=s.dim, image_embedding_size=(grid, grid), input_image_size=(image_size, image_size),
                         mask_in_chans=s.mask_in_chans)


def build_mask_decoder(sam_type: str) -> BatchedMaskDecoder:
    """SAM's ``MaskDecoder`` (as :class:`BatchedMaskDecoder`: one call decodes B different images)."""
    s = _spec(sam_type)
    return BatchedMaskDecoder(num_multimask_outputs=s.multimask, transformer_dim=s.dim, iou_head_depth=3,
                              iou_head_hidden_dim=s.iou_hidden,
                              transformer=TwoWayTransformer(depth=s.depth, embedding_dim=s.dim, mlp_dim=s.mlp,
                                                            num_heads=s.heads))


def load_sam_parts(path: str | PathLike[str], prompt_encoder: torch.nn.Module, mask_decoder: torch.nn.Module
                   ) -> dict[str, int]:
    """Load ``prompt_encoder.*`` and ``mask_decoder.*`` of the SAM checkpoint at ``path`` strictly; returns
    the number of tensors loaded per part. ``ValueError`` names missing / unexpected / mis-shaped keys."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"SAM checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    loaded = {}
    for prefix, module in (("prompt_encoder.", prompt_encoder), ("mask_decoder.", mask_decoder)):
        part = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if not part:
            raise ValueError(f"{path}: no '{prefix}*' keys; is it a SAM checkpoint (sam_vit_b_01ec64.pth …)?")
        own = module.state_dict()
        missing, unexpected = sorted(set(own) - set(part)), sorted(set(part) - set(own))
        shapes = [f"{k}: {tuple(part[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in part and part[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            raise ValueError(f"{path}: {prefix}* does not fit this {type(module).__name__}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}, shapes {shapes[:3]} (a SAM decoder of another size?)")
        module.load_state_dict(part, strict=True)
        loaded[prefix.rstrip(".")] = len(part)
    return loaded
