"""A tiny segmenter for the LoRA-site tests: a dinov2_tiny backbone + SAM-like heads.

The heads are a decoder whose attention block has q/k/v/out projections (the "decoder" site, as in SAM's
mask decoder) and an MLP, a norm, and a `proj` Linear (the "out" site).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prism.adapters import add_head_lora, add_lora
from tests.helpers.models import create

ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")


class Attention(nn.Module):
    """Self-attention through q/k/v/out projections (as in SAM's mask decoder): (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, num_heads: int = 2) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class Decoder(nn.Module):
    """2 learned tokens attend with the patches: (B, N, C) -> (B, 2, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(2, dim))
        self.attn = Attention(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.tokens.expand(len(patches), -1, -1), patches], dim=1)
        x = x + self.attn(x)
        return (x + self.mlp(x))[:, :2]


class TinyHeads(nn.Module):
    """Backbone features -> (B, 2, 3)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.decoder = Decoder(dim)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, 3)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.proj(self.norm(self.decoder(features["patches"].flatten(1, 2))))


class TinySegmenter(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.heads = TinyHeads(backbone.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.backbone(x))


def build(backbone_lora: bool = True, sites: tuple[str, ...] = ("decoder", "out")) -> TinySegmenter:
    """TinySegmenter with backbone LoRA (rank 4, last 2 blocks) and the head sites named in `sites`."""
    model = TinySegmenter(create("dinov2_tiny"))
    if backbone_lora:
        add_lora(model.backbone, rank=4, alpha=8, last_k=2)
    if "decoder" in sites:
        add_head_lora(model, "decoder", "decoder", ATTN, rank=2, alpha=4)
    if "out" in sites:
        add_head_lora(model, "out", "proj", ["proj"], rank=2, alpha=4)
    return model


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    """(n, 3, 56, 56) standard-normal inputs, reproducible by `seed`."""
    return torch.randn(n, 3, 56, 56, generator=torch.Generator().manual_seed(seed))


# Each group's members, from parameter names alone (independent of prism.adapters.stages).
def members(model: nn.Module, group: str, blocks: object = "all") -> set[str]:
    names = {n for n, _ in model.named_parameters()}
    lora = {n for n in names if ".lora_" in n}
    under = {"decoder": "heads.decoder.", "out": "heads.proj.", "backbone": "backbone."}
    if group == "head":
        return {
            n for n in names if n.startswith("heads.") and not n.startswith(("heads.decoder.", "heads.proj."))
        }
    family, _, site = group.partition(".")
    if family == "lora":
        return {n for n in lora if n.startswith(under[site])}
    if family == "head":
        return {n for n in names - lora if n.startswith(under[site])}
    base = {n for n in names - lora if n.startswith("backbone.")}
    if blocks == "all":
        return base
    return {
        n for n in base if n.startswith(tuple(f"backbone.model.blocks.{i}." for i in range(3 - blocks, 3)))
    }
