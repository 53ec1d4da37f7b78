"""Tiny models and bundles shared by the adapter, inference and bundle tests.

Everything here builds on the registered tiny backbones (3 blocks, width 48, random init): CPU-only, no
network, a fraction of a second each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from prism.adapters import add_lora
from prism.backbones import create_backbone

TIMM = ["dinov2_tiny", "dinov2_tiny_reg", "dino_tiny", "dinov3_tiny"]
ALL = [*TIMM, "clip_tiny"]
FAMILIES = ["dinov2_tiny", "clip_tiny"]  # one per family, for the slower tests

# Expected LoRA parameter suffixes inside a block, written out independently of prism.adapters.targets.
LORA_SUFFIXES = {
    ("timm_vit", "attn"): ["attn.qkv", "attn.proj"],
    ("timm_vit", "mlp"): ["mlp.fc1", "mlp.fc2"],
    ("timm_eva", "attn"): ["attn.qkv", "attn.proj"],
    ("timm_eva", "mlp"): ["mlp.fc1", "mlp.fc2"],  # SwiGLU blocks (dinov3_tiny_plus): tested on their own
    ("open_clip", "attn"): ["attn"],  # LoRA on attn.in_proj_weight (peft ParamWrapper around attn)
    ("open_clip", "mlp"): ["mlp.c_fc", "mlp.c_proj"],
}


class Normalisation(nn.Module):
    """Stands in for a backbone where only its input normalisation is read."""

    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)


class TinyClassifier(nn.Module):
    """Backbone + a linear head on the class token: (B, 3, S, S) -> (B, 3)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.Linear(backbone.embed_dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.backbone(x)["cls"])


@dataclass
class Stage:
    """The fields of a training stage that `prism.adapters.apply_stage` reads."""

    kind: str
    lr: dict[str, float] = field(default_factory=dict)
    blocks: object = "all"
    weight_decay: float = 0.0
    name: str | None = None
    lora_sites: list[str] | None = None
    frozen_blocks: int | list[int] | None = None


LRS = {"head": 1e-2, "lora": 1e-3, "backbone": 1e-4}
PLAN = [
    Stage("probe", {"head": 1e-2}),
    Stage("lora", {"head": 1e-2, "lora": 1e-3}),
    Stage("unfreeze", LRS, blocks=1),
]


def create(name: str, **kwargs) -> nn.Module:
    """create_backbone, with DINOv2's LayerScale (init 1e-5) set to 1 so that the blocks visibly matter."""
    backbone = create_backbone(name, **kwargs)
    with torch.no_grad():
        for n, p in backbone.named_parameters():
            if n.endswith((".ls1.gamma", ".ls2.gamma")):
                p.fill_(1.0)
    return backbone


def make(name: str, lora: bool = True, **lora_kwargs) -> TinyClassifier:
    """A `TinyClassifier` on `create(name)`, with LoRA (rank 4, alpha 8 unless given) when `lora`."""
    backbone = create(name)
    if lora:
        add_lora(backbone, **{"rank": 4, "alpha": 8, **lora_kwargs})
    return TinyClassifier(backbone)


def images(model: TinyClassifier, n: int = 2, seed: int = 0) -> torch.Tensor:
    """(n, 3, S, S) standard-normal inputs at the backbone's img_size, reproducible by `seed`."""
    size = model.backbone.img_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def randomize_lora_b(module: nn.Module, seed: int = 1) -> None:
    """LoRA B starts at zero, which would make many checks trivially pass: give it random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=gen))


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}
