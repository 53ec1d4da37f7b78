"""SAM's ViT image encoder as a backbone (family "sam"): segment-anything's own ``ImageEncoderViT``.

Registered: ``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h`` (the official architectures: patch 16, 1024 px,
windowed attention of 14 with global attention in four blocks, relative positions, a neck to 256 channels)
and ``sam_tiny`` (random init only, for tests). SAM's weights are not on a hub Prism reaches: give
``weights=`` an official checkpoint (``sam_vit_b_01ec64.pth`` …); its ``image_encoder.*`` keys are loaded
strictly, the prompt encoder and mask decoder keys are ignored. For another ``img_size`` than 1024 the
absolute position table is resampled (bicubic) and the global blocks' relative-position tables (linear),
as SAM's own ``get_rel_pos`` resizes them.

Outputs (the position table is fixed: inputs are ``img_size`` square)::

    "patches"  (B, S/16, S/16, 256)   the neck's output: SAM's image embedding (what its decoder reads)
    "cls"      (B, 256)               its mean over the grid (SAM has no class token)
    "layers"   (B, S/16, S/16, C)     block outputs before the neck, C = the encoder's width

Blocks are ``model.blocks.{i}``; LoRA targets: ``attn`` → ``attn.qkv``, ``attn.proj``; ``mlp`` →
``mlp.lin1``, ``mlp.lin2``. Input normalisation: SAM's pixel mean / std (ImageNet's, in 0..1 units).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from prism.backbones._registry import register_backbone
from prism.backbones.base import Backbone, check_img_size

__all__ = ["SamBackbone", "sam_state"]

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # SAM's 123.675 / 58.395 … in 0..255 units
PATCH, OUT_CHANS, WINDOW = 16, 256, 14


@dataclass(frozen=True)
class SamSpec:
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    out_chans: int = OUT_CHANS
    window_size: int = WINDOW


SPECS = {
    "sam_vit_b": SamSpec(768, 12, 12, (2, 5, 8, 11)),
    "sam_vit_l": SamSpec(1024, 24, 16, (5, 11, 17, 23)),
    "sam_vit_h": SamSpec(1280, 32, 16, (7, 15, 23, 31)),
    "sam_tiny": SamSpec(48, 2, 2, (1,), out_chans=32, window_size=4),
}


class SamBackbone(Backbone):
    """segment-anything's ``ImageEncoderViT`` (see the module docstring)."""

    family = "sam"
    block_prefix = "model.blocks"
    embedding_names = ("model.patch_embed", "model.pos_embed")

    def _features(self, x: torch.Tensor, indices: tuple[int, ...]
                  ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """(B, 3, S, S) → ({"cls": (B, 256), "patches": (B, N, 256)}, [(B, N, C) per index])."""
        m = self.model
        h = m.patch_embed(x)  # (B, g, g, C)
        if m.pos_embed is not None:
            h = h + m.pos_embed
        blocks = []
        for i, block in enumerate(m.blocks):
            h = block(h)
            if i in indices:
                blocks.append(h.flatten(1, 2))
        neck = m.neck(h.permute(0, 3, 1, 2))  # (B, 256, g, g)
        patches = neck.flatten(2).transpose(1, 2)
        return {"cls": patches.mean(1), "patches": patches}, blocks


def _build(spec: SamSpec, name: str, *, pretrained: bool, img_size: int | None, **overrides: object) -> Backbone:
    if pretrained:
        raise ValueError(f"{name}: SAM's weights are not on a hub Prism downloads from; pass weights=PATH of an "
                         "official checkpoint (sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth, sam_vit_h_4b8939.pth)")
    size = check_img_size(1024 if img_size is None else img_size, PATCH, name)
    kwargs = dict(depth=spec.depth, embed_dim=spec.embed_dim, img_size=size, mlp_ratio=4,
                  norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=spec.num_heads, patch_size=PATCH,
                  qkv_bias=True, use_rel_pos=True, global_attn_indexes=spec.global_attn_indexes,
                  window_size=spec.window_size, out_chans=spec.out_chans)
    kwargs.update(overrides)
    model = ImageEncoderViT(**kwargs)
    return SamBackbone(model, name=name, patch_size=PATCH, embed_dim=spec.out_chans, img_size=size,
                       num_blocks=spec.depth, mean=MEAN, std=STD)


for _name, _spec in SPECS.items():
    register_backbone(_name)(partial(_build, _spec, _name))


def sam_state(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A SAM checkpoint (``image_encoder.*`` keys, or the encoder's own) → the encoder's keys, the position
    table and the relative-position tables resampled to ``model``'s shapes."""
    if any(k.startswith("image_encoder.") for k in state):
        state = {k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")}
    own = model.state_dict()
    out = dict(state)
    for key, value in state.items():
        want = own.get(key)
        if want is None or want.shape == value.shape:
            continue
        if key == "pos_embed" and value.ndim == 4:  # (1, g, g, C)
            out[key] = F.interpolate(value.permute(0, 3, 1, 2).float(), size=want.shape[1:3], mode="bicubic",
                                     align_corners=False).permute(0, 2, 3, 1).to(value.dtype)
        elif key.endswith(("rel_pos_h", "rel_pos_w")) and value.ndim == 2 and value.shape[1] == want.shape[1]:
            out[key] = F.interpolate(value.T[None].float(), size=want.shape[0], mode="linear").squeeze(0).T.to(
                value.dtype)
    return out
