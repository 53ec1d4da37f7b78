"""CLIP text towers built by open_clip, frozen: class names -> unit text embeddings in CLIP's joint space.

    tower = create_text_tower("clip_vitb16", weights="open_clip_vitb16.safetensors")
    tower.encode(["a photo of a cat.", "a photo of a dog."])   # (2, D) float32, unit L2 norm

The wrapped module is open_clip's `TextTransformer`, as `open_clip.model._build_text_tower` builds it for the
image tower's architecture (`OpenClipSpec.arch` of the same registered name), so `tower.model(tokens)` is
`CLIP.encode_text(tokens)` and the file format is a full CLIP state dict (the text keys: token_embedding,
positional_embedding, transformer.*, ln_final, text_projection; "visual.*" and logit_scale are ignored) or a
text-only one. Tokens come from `open_clip.get_tokenizer(arch)` (its BPE vocabulary ships with open_clip).
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import _build_text_tower
from torch import nn

from prism.backbones.base import seeded, state_dict_sha256
from prism.backbones.clip import SPECS, OpenClipSpec
from prism.backbones.weights import load_state_dict_strict, read_checkpoint

__all__ = ["ClipTextTower", "create_text_tower", "text_tokenizer", "text_tower_names"]

_SPECS: dict[str, OpenClipSpec] = {spec.name: spec for spec in SPECS}
_TINY_TEXT = {"width": 32, "heads": 2, "layers": 2}  # clip_tiny's text tower: test architecture


def text_tower_names() -> list[str]:
    """The registered CLIP backbones, each of which has a text tower."""
    return sorted(_SPECS)


def text_tokenizer(name: str):
    """The open_clip tokenizer of the registered CLIP backbone ``name``: ``tok(list of N strings)`` → (N, L)
    int64 token ids (L = 77 for OpenAI's CLIP); what a data pipeline calls without building the tower."""
    if name not in _SPECS:
        raise ValueError(f"{name!r} has no text tower; CLIP backbones: {', '.join(text_tower_names())}")
    return open_clip.get_tokenizer(_SPECS[name].arch)


class ClipTextTower(nn.Module):
    """Frozen open_clip text tower: `encode(texts)` (N strings) -> (N, D) unit embeddings, float32."""

    def __init__(self, model: nn.Module, tokenizer, *, name: str, embedding_dim: int) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.embedding_dim = int(embedding_dim)
        # built on the meta device (plan checks: shapes only), there are no bytes to hash
        on_meta = any(p.is_meta for p in self.model.parameters())
        self.weights_sha256 = "" if on_meta else state_dict_sha256(self.model)

    def train(self, mode: bool = True) -> ClipTextTower:  # frozen: always in eval mode
        return super().train(False)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """N strings -> (N, D) `CLIP.encode_text` of their tokens, L2-normalised, float32 on CPU."""
        if isinstance(texts, str) or not texts:
            raise ValueError(f"encode takes a non-empty list of strings, got {texts!r}")
        device = next(self.model.parameters()).device
        out = [self.model(self.tokenizer(list(texts[i:i + batch_size])).to(device)).float()
               for i in range(0, len(texts), batch_size)]
        return F.normalize(torch.cat(out), dim=-1).cpu()


def create_text_tower(
    name: str, pretrained: bool = False, weights: str | PathLike[str] | None = None, seed: int = 0,
    **overrides: object,
) -> ClipTextTower:
    """The text tower of the registered CLIP backbone `name` (random init with `seed`, the tag's weights when
    `pretrained`, or a local CLIP checkpoint `weights`, loaded strictly); overrides are text-config fields."""
    if name not in _SPECS:
        raise ValueError(f"{name!r} has no text tower; CLIP backbones: {', '.join(text_tower_names())}")
    if pretrained and weights is not None:
        raise ValueError(f"{name}: give either pretrained=True or weights=PATH, not both")
    spec = _SPECS[name]
    cfg = open_clip.get_model_config(spec.arch)
    text_cfg = {**cfg["text_cfg"], **(_TINY_TEXT if spec.tag is None else {}), **overrides}
    if pretrained:
        if spec.tag is None:
            raise ValueError(f"{name} is a test architecture without published weights; use pretrained=False")
        try:
            clip = open_clip.create_model(spec.arch, pretrained=spec.tag, require_pretrained=True, text_cfg=text_cfg)
        except Exception as exc:
            raise RuntimeError(
                f"{name}: could not fetch the open_clip weights {spec.arch!r} / {spec.tag!r} ({type(exc).__name__}: "
                f"{exc}). Without network access, download the checkpoint elsewhere and pass weights=PATH."
            ) from exc
        model = _build_text_tower(cfg["embed_dim"], text_cfg, quick_gelu=cfg.get("quick_gelu", False))
        model.load_state_dict(_text_keys(clip.state_dict()), strict=True)
    else:
        with seeded(seed):
            model = _build_text_tower(cfg["embed_dim"], text_cfg, quick_gelu=cfg.get("quick_gelu", False))
        if weights is not None:
            load_state_dict_strict(model, _text_keys(read_checkpoint(weights)),
                                   f"weights file {str(weights)!r} for the text tower of {name}")
    return ClipTextTower(model, open_clip.get_tokenizer(spec.arch), name=name, embedding_dim=cfg["embed_dim"])


def _text_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full CLIP state dict -> the TextTransformer's keys (the image tower, logit scale / bias dropped)."""
    drop = ("visual.", "logit_scale", "logit_bias", "attn_mask")
    return {k.removeprefix("text."): v for k, v in state.items() if not k.startswith(drop)}
