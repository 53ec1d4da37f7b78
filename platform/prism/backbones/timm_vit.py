"""DINOv2 and DINO ViTs built by `timm.create_model` (family "timm_vit").

The wrapped module is a timm `VisionTransformer` without classifier (num_classes=0) and with
dynamic_img_size=True, so any input whose sides are multiples of the patch size is accepted (the
position embeddings are interpolated on the fly by timm). Blocks are "model.blocks.{i}".

Outputs: "cls" (B, C) and "patches" (B, H/p, W/p, C) after the final norm; "layers" (block outputs,
before the final norm) come from timm's own `VisionTransformer.forward_intermediates` in the same pass.
These families have no joint image-text space: embedding_dim is None and there is no "embedding".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import timm
import torch
from timm.layers import ConvNormAct, HybridEmbed, LayerNorm2d

from prism.backbones._registry import register_backbone
from prism.backbones.base import Backbone, check_img_size

_TINY = {"embed_dim": 48, "depth": 3, "num_heads": 2}
# DINOv2's LayerScale starts at 1e-5, which is right for fine-tuning pretrained weights but makes a
# random-init model ignore its blocks (and its LoRA adapters). Tiny random variants start it at 1.
_TINY_DINOV2 = {**_TINY, "init_values": 1.0}


def conv_stem_embed(*, stem_channels: tuple[int, ...] = (24, 48, 96, 128), stem_strides: tuple[int, ...] = (2, 2, 2, 2),
                    **kwargs: object) -> HybridEmbed:
    """timm ``embed_layer``: a small CNN of 3x3 conv → channel LayerNorm → GELU layers (total stride the
    product of ``stem_strides``) under the patch projection, instead of one linear map of raw pixels.

    Early convolutions make ViTs far more sample-efficient from random init (Xiao et al., "Early
    Convolutions Help Transformers See Better", 2021): what the tiny random-init variants need to learn
    shapes from a few thousand images on a CPU. Built from timm's own ``HybridEmbed`` and ``ConvNormAct``;
    the per-pixel LayerNorm has no batch statistics, so training, eval and DDP behave alike. ``kwargs`` are
    what VisionTransformer passes to its embed layer; ``patch_size`` is the total stride p (a multiple of
    the stem's), as for a plain patch embedding.
    """
    patch = int(kwargs.pop("patch_size"))
    total = math.prod(stem_strides)
    if patch % total or len(stem_channels) != len(stem_strides):
        raise ValueError(f"patch_size={patch} must be a multiple of the stem's stride {total}, and "
                         f"stem_channels {stem_channels} must match stem_strides {stem_strides}")
    in_chans = int(kwargs.pop("in_chans", 3))
    layers, c_in = [], in_chans
    for c, stride in zip(stem_channels, stem_strides, strict=True):
        layers.append(ConvNormAct(c_in, c, kernel_size=3, stride=stride, norm_layer=LayerNorm2d,
                                  act_layer=torch.nn.GELU))
        c_in = c
    kwargs.pop("dynamic_img_pad", None)
    return HybridEmbed(torch.nn.Sequential(*layers), patch_size=patch // total, in_chans=in_chans, **kwargs)


# A tiny ViT in DINOv2's architecture (blocks, norms, LayerScale, tokens and LoRA sites) whose patch
# embedding is a conv stem of total stride 16 (see conv_stem_embed): 7 x 7 tokens of 64 dims at 112 px.
# Random init only — it exists so that tests, demos and CPU-only users train something that learns in
# minutes; its scores say nothing about DINOv2.
_TINY_CONV = {**_TINY_DINOV2, "embed_dim": 64, "patch_size": 16, "embed_layer": conv_stem_embed}


class TimmViTBackbone(Backbone):
    """timm VisionTransformer wrapper: cls = final-norm class token, patches = final-norm patch tokens.

    Register tokens (DINOv2 *_reg) sit between the class token and the patches and are dropped, from
    "patches" and from every entry of "layers".
    """

    family = "timm_vit"
    block_prefix = "model.blocks"
    embedding_names = (
        "model.cls_token",
        "model.reg_token",
        "model.pos_embed",
        "model.patch_embed",
        "model.norm_pre",
    )
    dynamic_img_size = True

    def _features(
        self, x: torch.Tensor, indices: tuple[int, ...]
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """(B, 3, H, W) -> ({"cls": (B, C), "patches": (B, N, C)},
        [(B, N, C) output of block i, prefix tokens removed, per index])."""
        if indices:
            # one pass; intermediates are taken before the final norm, prefix tokens already stripped
            tokens, blocks = self.model.forward_intermediates(
                x, indices=list(indices), norm=False, output_fmt="NLC"
            )
        else:
            tokens, blocks = self.model.forward_features(x), []
        # tokens: (B, num_prefix_tokens + N, C), after the final norm
        return {"cls": tokens[:, 0], "patches": tokens[:, self.model.num_prefix_tokens :]}, list(blocks)


@dataclass(frozen=True)
class TimmViTSpec:
    """A registered timm ViT: timm model name (with pretrained tag), patch size, default img_size, kwargs."""

    name: str
    timm_name: str
    patch_size: int
    img_size: int
    kwargs: dict[str, object] = field(default_factory=dict)
    has_hub_weights: bool = True


def build_timm_vit(
    spec: TimmViTSpec,
    *,
    pretrained: bool,
    img_size: int | None,
    wrapper: type[TimmViTBackbone] = TimmViTBackbone,
    **overrides: object,
) -> Backbone:
    """Build `spec` (random init, or hub weights when `pretrained`) wrapped in `wrapper`; overrides go to
    `timm.create_model`."""
    kwargs = {**spec.kwargs, **overrides}
    patch_size = int(kwargs.get("patch_size", spec.patch_size))
    img_size = check_img_size(spec.img_size if img_size is None else img_size, patch_size, spec.name)
    if pretrained and not spec.has_hub_weights:
        raise ValueError(
            f"{spec.name} is a test architecture without published weights; use pretrained=False"
        )
    try:
        model = timm.create_model(
            spec.timm_name,
            pretrained=pretrained,
            num_classes=0,
            img_size=img_size,
            dynamic_img_size=True,
            **kwargs,
        )
    except TypeError as exc:
        if not overrides:
            raise
        raise ValueError(f"{spec.name}: invalid architecture override(s) {sorted(overrides)}: {exc}") from exc
    except Exception as exc:
        if not pretrained:
            raise
        raise RuntimeError(
            f"{spec.name}: could not fetch the pretrained weights of timm model {spec.timm_name!r} from the "
            f"Hugging Face Hub ({type(exc).__name__}: {exc}). Without network access, put the weights in the "
            "HF cache (HF_HUB_OFFLINE=1) or download the checkpoint elsewhere and pass weights=PATH."
        ) from exc
    stride = model.patch_embed.feat_ratio(as_scalar=False) if hasattr(model.patch_embed, "feat_ratio") else \
        model.patch_embed.patch_size
    assert tuple(stride) == (patch_size, patch_size), (stride, patch_size)
    return wrapper(
        model,
        name=spec.name,
        patch_size=patch_size,
        embed_dim=model.embed_dim,
        img_size=img_size,
        num_blocks=len(model.blocks),
        mean=model.pretrained_cfg["mean"],
        std=model.pretrained_cfg["std"],
    )


SPECS = [
    *(
        TimmViTSpec(f"dinov2_vit{size}14{suffix}", f"vit_{arch}_patch14{tag}_dinov2.lvd142m", 14, 224)
        for size, arch in (("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant"))
        for suffix, tag in (("", ""), ("_reg", "_reg4"))
    ),
    TimmViTSpec("dino_vits16", "vit_small_patch16_224.dino", 16, 224),
    TimmViTSpec("dino_vitb16", "vit_base_patch16_224.dino", 16, 224),
    TimmViTSpec("dinov2_tiny", "vit_small_patch14_dinov2.lvd142m", 14, 56, _TINY_DINOV2, has_hub_weights=False),
    TimmViTSpec(
        "dinov2_tiny_reg", "vit_small_patch14_reg4_dinov2.lvd142m", 14, 56, _TINY_DINOV2, has_hub_weights=False
    ),
    TimmViTSpec("dinov2_tiny_conv", "vit_small_patch14_dinov2.lvd142m", 16, 112, _TINY_CONV,
                has_hub_weights=False),
    TimmViTSpec("dino_tiny", "vit_small_patch16_224.dino", 16, 64, _TINY, has_hub_weights=False),
]

for _spec in SPECS:
    register_backbone(_spec.name)(partial(build_timm_vit, _spec))
