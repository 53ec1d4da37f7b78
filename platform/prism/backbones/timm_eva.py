"""DINOv3 ViTs built by `timm.create_model` (family "timm_eva": timm's `Eva` with DINOv3's RoPE).

timm's `vit_*_patch16_dinov3` models are `timm.models.eva.Eva`: patch 16, rotary position embeddings
(no absolute position table, so any input whose sides are multiples of 16 is accepted), a class token and
four register ("storage") tokens, LayerScale, and for S+ / H+ a SwiGLU MLP (`mlp.fc1_g`, `mlp.fc1_x`,
`mlp.fc2`) instead of `mlp.fc1` / `mlp.fc2`. Blocks are "model.blocks.{i}".

Outputs are those of every timm ViT here (see `prism.backbones.timm_vit.TimmViTBackbone`): "cls" (B, C)
and "patches" (B, H/16, W/16, C) after the final norm, register tokens dropped; "layers" from timm's own
`Eva.forward_intermediates`.

Attention and LoRA. The `_qkvb` variants are registered: their attention has a fused `attn.qkv` linear
without bias plus `q_bias` / `v_bias` parameters (k has none, as in DINOv3), which loads every released
checkpoint exactly (the original files carry a qkv bias; timm's non-`_qkvb` variants drop it). timm adds
that bias with `F.linear(x, attn.qkv.weight, bias)`, which bypasses `attn.qkv.forward`, so a LoRA layer
wrapping `attn.qkv` would never run. The builder sets timm's own `qkv_bias_separate` switch on every
attention, so the block computes `attn.qkv(x) + bias` (the same numbers) and LoRA on `attn.qkv` takes
effect — a test checks that it changes the output.
"""

from __future__ import annotations

from functools import partial

import torch

from prism.backbones._registry import register_backbone
from prism.backbones.base import Backbone
from prism.backbones.timm_vit import TimmViTBackbone, TimmViTSpec, build_timm_vit

# DINOv3 LayerScale starts at 1e-5 (right for pretrained weights); random tiny variants start at 1 so that
# their blocks and adapters matter from the first step.
_TINY = {"embed_dim": 48, "depth": 3, "num_heads": 2, "init_values": 1.0}


class TimmEvaBackbone(TimmViTBackbone):
    """timm Eva (DINOv3) wrapper; the forward is TimmViTBackbone's (Eva has the same feature API)."""

    family = "timm_eva"
    embedding_names = (*TimmViTBackbone.embedding_names, "model.rope")


def _route_qkv_through_its_module(model: torch.nn.Module) -> None:
    """Make every attention call `attn.qkv(x)` (then add q/k/v bias) so that LoRA on attn.qkv runs."""
    for block in model.blocks:
        if getattr(block.attn, "qkv", None) is not None:
            block.attn.qkv_bias_separate = True


def build_timm_eva(spec: TimmViTSpec, *, pretrained: bool, img_size: int | None, **overrides: object) -> Backbone:
    """Build `spec` like `build_timm_vit`, wrapped as a TimmEvaBackbone with qkv routed through its module."""
    backbone = build_timm_vit(spec, pretrained=pretrained, img_size=img_size, wrapper=TimmEvaBackbone,
                              **overrides)
    _route_qkv_through_its_module(backbone.model)
    return backbone


_SIZES = (  # registered name, timm architecture
    ("dinov3_vits16", "vit_small_patch16_dinov3_qkvb"),
    ("dinov3_vits16plus", "vit_small_plus_patch16_dinov3_qkvb"),
    ("dinov3_vitb16", "vit_base_patch16_dinov3_qkvb"),
    ("dinov3_vitl16", "vit_large_patch16_dinov3_qkvb"),
    ("dinov3_vith16plus", "vit_huge_plus_patch16_dinov3_qkvb"),
)

SPECS = [
    *(TimmViTSpec(name, f"{arch}.lvd1689m", 16, 224) for name, arch in _SIZES),
    # Test architectures: DINOv3's blocks (RoPE, registers, LayerScale, qkv bias; SwiGLU for "plus"),
    # 3 blocks of width 48, random init only.
    TimmViTSpec("dinov3_tiny", "vit_small_patch16_dinov3_qkvb.lvd1689m", 16, 64, _TINY, has_hub_weights=False),
    TimmViTSpec("dinov3_tiny_plus", "vit_small_plus_patch16_dinov3_qkvb.lvd1689m", 16, 64, _TINY,
                has_hub_weights=False),
]

for _spec in SPECS:
    register_backbone(_spec.name)(partial(build_timm_eva, _spec))
