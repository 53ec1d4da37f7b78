"""CLIP image towers built by open_clip (family "open_clip").

The wrapped module is the `visual` tower of an open_clip CLIP model, an
`open_clip.transformer.VisionTransformer`, as open_clip builds it, image projection `proj` (C, D)
included, so `backbone.model.state_dict()` is a visual state dict in open_clip's own key format and
`backbone.model(x)` is `CLIP.encode_image(x)`. The backbone runs the tower's steps itself, once:

    tokens = ln_pre(embeddings(x))                      (B, 1 + N, C), N = (S / p)^2
    tokens = transformer(tokens)                        block outputs -> "layers" (class token removed)
    cls, patches = ln_post(tokens)[:, 0], [:, 1:]       (B, C), (B, N, C) -> "cls", "patches"
    embedding = cls @ proj                              (B, D) -> "embedding" = CLIP.encode_image(x)

with C the tower width (768 for ViT-B, 1024 for ViT-L) and D the joint image-text width (512 for ViT-B,
768 for ViT-L). Blocks are "model.transformer.resblocks.{i}". Position embeddings are fixed: inputs must
be img_size x img_size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial

import open_clip
import torch
from open_clip.model import CLIPVisionCfg, _build_vision_tower

from prism.backbones._registry import register_backbone
from prism.backbones.base import Backbone, check_img_size

_VISION_FIELDS = frozenset(
    f.name
    for f in dataclasses.fields(CLIPVisionCfg)
    if not f.name.startswith("timm_") and f.name != "output_tokens"
)
_TINY = {"width": 48, "layers": 3, "head_width": 24, "patch_size": 16, "image_size": 64}


class OpenClipBackbone(Backbone):
    """open_clip VisionTransformer wrapper: cls = ln_post(class token), patches = ln_post(patch tokens),
    embedding = the tower's pooled output times its projection `proj`."""

    family = "open_clip"
    block_prefix = "model.transformer.resblocks"
    embedding_names = ("model.class_embedding", "model.positional_embedding", "model.conv1", "model.ln_pre")
    dynamic_img_size = False

    def _features(
        self, x: torch.Tensor, indices: tuple[int, ...]
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """(B, 3, S, S) -> ({"cls": (B, C), "patches": (B, N, C), "embedding": (B, D)},
        [(B, N, C) output of block i, class token removed, per index])."""
        visual = self.model
        tokens = visual._embeds(x)  # (B, 1 + N, C) after ln_pre; the steps of VisionTransformer.forward
        if indices:
            tokens, blocks = visual.transformer.forward_intermediates(tokens, indices=list(indices))
        else:
            tokens, blocks = visual.transformer(tokens), []
        pooled, patches = visual._pool(tokens)  # ln_post, then class token / patch tokens
        return (
            {"cls": pooled, "patches": patches, "embedding": pooled @ visual.proj},
            [block[:, 1:] for block in blocks],
        )


@dataclass(frozen=True)
class OpenClipSpec:
    """A registered CLIP image tower: open_clip config name, pretrained tag and vision-config overrides."""

    name: str
    arch: str
    tag: str | None
    vision: dict[str, object] = field(default_factory=dict)


def build_open_clip(
    spec: OpenClipSpec, *, pretrained: bool, img_size: int | None, **overrides: object
) -> Backbone:
    """Build `spec`'s image tower (random init, or the tag's weights when `pretrained`).

    `overrides` are open_clip vision-config fields (`CLIPVisionCfg`: width, layers, head_width, ...).
    """
    unknown = sorted(set(overrides) - _VISION_FIELDS)
    if unknown:
        raise ValueError(
            f"{spec.name}: unknown open_clip vision override(s) {unknown}; valid: {', '.join(sorted(_VISION_FIELDS))}"
        )
    cfg = open_clip.get_model_config(spec.arch)
    assert cfg is not None, spec.arch
    vision_cfg = {**cfg["vision_cfg"], **spec.vision, **overrides}
    patch_size = int(vision_cfg["patch_size"])
    img_size = check_img_size(
        vision_cfg["image_size"] if img_size is None else img_size, patch_size, spec.name
    )
    vision_cfg["image_size"] = img_size
    if pretrained:
        if spec.tag is None:
            raise ValueError(
                f"{spec.name} is a test architecture without published weights; use pretrained=False"
            )
        try:
            clip = open_clip.create_model(
                spec.arch, pretrained=spec.tag, require_pretrained=True, vision_cfg=vision_cfg
            )
        except Exception as exc:
            raise RuntimeError(
                f"{spec.name}: could not fetch the open_clip weights {spec.arch!r} / {spec.tag!r} "
                f"({type(exc).__name__}: {exc}). Without network access, put the weights in the HF cache "
                "(HF_HUB_OFFLINE=1) or download the checkpoint elsewhere and pass weights=PATH."
            ) from exc
        visual = clip.visual
    else:
        visual = _build_vision_tower(cfg["embed_dim"], vision_cfg, quick_gelu=cfg.get("quick_gelu", False))
    pretrained_cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag) if spec.tag else {}
    return OpenClipBackbone(
        visual,
        name=spec.name,
        patch_size=patch_size,
        embed_dim=visual.transformer.width,
        embedding_dim=visual.proj.shape[1],
        img_size=img_size,
        num_blocks=len(visual.transformer.resblocks),
        mean=pretrained_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN),
        std=pretrained_cfg.get("std", open_clip.OPENAI_DATASET_STD),
    )


SPECS = [
    OpenClipSpec("clip_vitb16", "ViT-B-16-quickgelu", "openai"),
    OpenClipSpec("clip_vitb32", "ViT-B-32-quickgelu", "openai"),
    OpenClipSpec("clip_vitl14", "ViT-L-14-quickgelu", "openai"),
    OpenClipSpec("clip_tiny", "ViT-B-16-quickgelu", None, _TINY),
]

for _spec in SPECS:
    register_backbone(_spec.name)(partial(build_open_clip, _spec))
