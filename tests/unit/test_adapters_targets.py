"""prism.adapters targets and add_lora on the tiny backbones: which layers get LoRA, and bad settings."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prism.adapters import add_lora, build_targets, has_lora, lora_parameter_names, valid_target_kinds
from tests.helpers.models import ALL, FAMILIES, LORA_SUFFIXES, create


def expected_lora_names(backbone: nn.Module, kinds: tuple[str, ...], blocks: list[int]) -> set[str]:
    return {
        f"{backbone.block_names[i]}.{suffix}.lora_{ab}.default.weight"
        for i in blocks
        for kind in kinds
        for suffix in LORA_SUFFIXES[(backbone.family, kind)]
        for ab in "AB"
    }


def test_target_table_errors_list_valid_names():
    backbone = create("dinov2_tiny")
    assert valid_target_kinds("timm_vit") == valid_target_kinds("open_clip") == ["attn", "mlp"]
    assert valid_target_kinds("sam") == ["attn", "mlp"]
    with pytest.raises(ValueError, match="valid families: open_clip, sam, timm_eva, timm_vit"):
        valid_target_kinds("resnet")
    with pytest.raises(ValueError, match="valid kinds: attn, mlp"):
        add_lora(backbone, targets=("attn", "qkv"))
    with pytest.raises(ValueError, match="empty"):
        add_lora(backbone, targets=())
    backbone.family = "resnet"
    with pytest.raises(ValueError, match="valid families"):
        add_lora(backbone)
    assert not has_lora(backbone)


def test_target_regex_for_last_blocks():
    spec = build_targets(create("dinov2_tiny"), ("attn", "mlp"), last_k=2)
    assert spec.blocks == (1, 2)
    assert (
        spec.target_modules
        == r"(?:model\.blocks\.1|model\.blocks\.2)\.(?:attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
    )
    assert spec.target_parameters == ()
    clip = build_targets(create("clip_tiny"), ("attn",), last_k=1)
    assert clip.target_modules == ""
    assert clip.target_parameters == ("model.transformer.resblocks.2.attn.in_proj_weight",)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("kinds", [("attn",), ("mlp",), ("attn", "mlp")])
def test_add_lora_adapts_exactly_the_targets(name, kinds):
    backbone = create(name)
    x = torch.randn(2, 3, backbone.img_size, backbone.img_size)
    before = backbone(x)["cls"]
    base_names_before = {n for n, _ in backbone.named_parameters()}
    assert add_lora(backbone, rank=4, alpha=8, targets=kinds) is backbone

    lora = lora_parameter_names(backbone)
    assert lora == expected_lora_names(backbone, kinds, list(range(backbone.num_blocks)))
    assert {n for n, _ in backbone.named_parameters() if ".lora_" in n} == lora
    assert len(base_names_before) == len({n for n, _ in backbone.named_parameters()} - lora)
    assert backbone.lora_config == {
        "rank": 4,
        "alpha": 8.0,
        "dropout": 0.0,
        "last_k": None,
        "targets": list(kinds),
        "blocks": [0, 1, 2],
    }
    assert torch.equal(backbone(x)["cls"], before)  # B = 0: adapters start as the identity


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("last_k", [1, 2, 3])
def test_last_k_adapts_only_the_last_blocks(name, last_k):
    backbone = create(name)
    add_lora(backbone, rank=2, last_k=last_k, targets=("attn", "mlp"))
    blocks = list(range(backbone.num_blocks - last_k, backbone.num_blocks))
    assert lora_parameter_names(backbone) == expected_lora_names(backbone, ("attn", "mlp"), blocks)
    assert backbone.lora_config["blocks"] == blocks


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"last_k": 0}, "last_k=0 is out of range"),
        ({"last_k": 4}, r"use an int in 1\.\.3"),
        ({"last_k": True}, "last_k=True"),
        ({"last_k": 1.5}, "last_k=1.5"),
        ({"rank": 0}, "rank=0"),
        ({"alpha": -1}, "alpha=-1"),
        ({"dropout": 1.0}, "dropout=1.0"),
    ],
)
def test_add_lora_rejects_bad_settings(kwargs, message):
    backbone = create("dinov2_tiny")
    with pytest.raises(ValueError, match=message):
        add_lora(backbone, **kwargs)
    assert not has_lora(backbone)


def test_add_lora_twice_and_dropout_rules():
    timm_backbone = add_lora(create("dinov2_tiny"), dropout=0.1)
    with pytest.raises(RuntimeError, match="already has LoRA"):
        add_lora(timm_backbone)
    with pytest.raises(ValueError, match="dropout=0.0 or use targets"):
        add_lora(create("clip_tiny"), dropout=0.1)
    assert has_lora(add_lora(create("clip_tiny"), dropout=0.1, targets=("mlp",)))


@pytest.mark.parametrize("name", FAMILIES)
def test_add_lora_leaves_base_requires_grad_alone(name):
    """Every LoRA parameter trains; every base parameter keeps its flag (peft renames a wrapped layer's
    weights to ``<layer>.base_layer.<weight>``, so names are compared with that part removed)."""
    backbone = create(name)
    backbone.freeze(1)
    flags = {n: p.requires_grad for n, p in backbone.named_parameters()}
    assert not all(flags.values()) and any(flags.values())  # a mix, so that both directions are checked
    add_lora(backbone)
    lora = lora_parameter_names(backbone)
    after = {n: p.requires_grad for n, p in backbone.named_parameters()}
    assert all(after[n] for n in lora)
    base_after = {n.replace(".base_layer.", "."): flag for n, flag in after.items() if n not in lora}
    assert base_after == flags
