"""Inject LoRA adapters into a backbone with peft, and find them again.

After `add_lora`, peft has replaced each targeted module by a LoRA layer that keeps the original module
as `base_layer`, so parameter names change like this (timm_vit, block 11, rank r, embed C):

    model.blocks.11.attn.qkv.weight  ->  model.blocks.11.attn.qkv.base_layer.weight         (3C, C) frozen base
                                         model.blocks.11.attn.qkv.lora_A.default.weight     (r, C)
                                         model.blocks.11.attn.qkv.lora_B.default.weight     (3C, r), zero init

and for open_clip attention (a parameter target, see `prism.adapters.targets`):

    model.transformer.resblocks.11.attn.in_proj_weight
        ->  model.transformer.resblocks.11.attn.base_layer.in_proj_weight                   (3C, C)
            model.transformer.resblocks.11.attn.lora_A.default.weight                       (r, C)
            model.transformer.resblocks.11.attn.lora_B.default.weight                       (3C, r)

LoRA parameter names therefore always contain ".lora_A." / ".lora_B.". The effective weight is
W + (alpha / r) * B @ A; B starts at zero, so a freshly adapted backbone computes what it computed before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer, ParamWrapper
from torch import nn

from prism.adapters.targets import build_targets, normalize_kinds

__all__ = ["add_lora", "has_lora", "lora_parameter_names"]

ADAPTER_NAME = "default"


def lora_parameter_names(module: nn.Module) -> set[str]:
    """Names (as in `module.named_parameters()`) of every LoRA parameter injected anywhere in `module`."""
    names: set[str] = set()
    for prefix, layer in module.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        for attr in layer.adapter_layer_names:
            holder = getattr(layer, attr, None)
            if isinstance(holder, nn.Module):
                head = f"{prefix}.{attr}" if prefix else attr
                names.update(f"{head}.{n}" for n, _ in holder.named_parameters())
    return names


def has_lora(module: nn.Module) -> bool:
    """True when peft LoRA layers are present in `module`."""
    return any(isinstance(m, LoraLayer) for m in module.modules())


def _check_number(name: str, value: Any, *, low: float, high: float | None, integer: bool, hint: str) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or value < low or (high is not None and value >= high):
        raise ValueError(f"LoRA {name}={value!r} is invalid; {hint}")


def add_lora(
    backbone: nn.Module,
    rank: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    last_k: int | None = None,
    targets: str | Iterable[str] = ("attn",),
) -> nn.Module:
    """Inject peft LoRA adapters (rank `rank`, scaling alpha / rank) into the last `last_k` blocks, in place.

    Args:
        backbone: a Backbone (attributes family, num_blocks, block_names).
        rank: LoRA rank r >= 1.
        alpha: LoRA alpha > 0; the update is scaled by alpha / rank.
        dropout: dropout on the LoRA branch input, in [0, 1). Not available for open_clip "attn".
        last_k: adapt the last K blocks (1..num_blocks); None adapts every block.
        targets: target kinds among `valid_target_kinds(backbone.family)`, e.g. ("attn", "mlp").

    LoRA parameters come out trainable; base parameters keep the requires_grad they had (stages decide
    what trains, see `apply_stage`). The settings are stored as the dict `backbone.lora_config` (keys rank,
    alpha, dropout, last_k, targets, blocks), which is what `save_lora` / `save_adapted` record.
    Returns `backbone`.
    """
    if has_lora(backbone):
        raise RuntimeError(
            "the backbone already has LoRA adapters; call add_lora once per backbone (merge_lora first to fold "
            "the existing ones into the weights)"
        )
    _check_number("rank", rank, low=1, high=None, integer=True, hint="use an int >= 1")
    _check_number("alpha", alpha, low=1e-12, high=None, integer=False, hint="use a number > 0")
    _check_number("dropout", dropout, low=0.0, high=1.0, integer=False, hint="use a float in [0, 1)")
    kinds = normalize_kinds(backbone.family, targets)
    spec = build_targets(backbone, kinds, last_k)
    if dropout > 0 and not spec.supports_dropout:
        raise ValueError(
            f"LoRA dropout={dropout} is not available for {backbone.family} targets {list(kinds)}: open_clip "
            "attention is adapted through its in_proj_weight parameter, where dropout cannot apply; "
            "set dropout=0.0 or use targets=['mlp']"
        )

    before = [(p, p.requires_grad) for p in backbone.parameters()]
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=float(dropout),
        target_modules=spec.target_modules or [],
        target_parameters=list(spec.target_parameters) or None,
        bias="none",
    )
    inject_adapter_in_model(config, backbone, adapter_name=ADAPTER_NAME)
    for param, flag in before:  # peft freezes every non-LoRA parameter; stages own that decision
        param.requires_grad_(flag)
    _check_injected(backbone, spec.module_names, spec.target_parameters)

    backbone.lora_config = {
        "rank": int(rank),
        "alpha": float(alpha),
        "dropout": float(dropout),
        "last_k": last_k,
        "targets": list(kinds),
        "blocks": list(spec.blocks),
    }
    return backbone


def _check_injected(backbone: nn.Module, module_names: Iterable[str], parameter_names: Iterable[str]) -> None:
    """RuntimeError unless every target module is a LoRA layer and every target parameter is wrapped."""
    modules = dict(backbone.named_modules())
    missed = [n for n in module_names if not isinstance(modules.get(n), LoraLayer)]
    for full in parameter_names:
        owner, _, pname = full.rpartition(".")
        layer = modules.get(owner)
        wrapped = set()
        while isinstance(layer, ParamWrapper):
            wrapped.add(layer.parameter_name)
            layer = layer.base_layer
        if pname not in wrapped:
            missed.append(full)
    if missed:
        raise RuntimeError(
            f"peft did not adapt the LoRA targets {missed}; the installed peft does not support them"
        )
