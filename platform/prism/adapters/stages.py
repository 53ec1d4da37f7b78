"""Training stages: which parameters train, and the optimizer param groups that train them.

A model has `.backbone` (a Backbone, possibly with LoRA from `add_lora`) and `.heads` (an nn.Module).
A stage is any object with

    kind          "probe" | "lora" | "unfreeze"
    lr            dict with keys among "head", "lora", "backbone" -> float
    blocks        unfreeze only: "all" | int N (the last N blocks) | list[int] (those blocks)
    weight_decay  float, 0.0 when absent
    name          optional display name (defaults to kind)

and trains exactly

    probe     the heads
    lora      the LoRA parameters + the heads
    unfreeze  the base parameters of the chosen blocks ("all": every base parameter, embeddings and final
              norms included) + the LoRA parameters, when present + the heads
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from prism.adapters.lora import lora_parameter_names

__all__ = [
    "GROUPS",
    "STAGE_KINDS",
    "apply_stage",
    "parameter_groups",
    "stage_parameter_names",
    "trainable_names_union",
]

STAGE_KINDS = ("probe", "lora", "unfreeze")
GROUPS = ("head", "lora", "backbone")


def _stage_name(stage: Any) -> str:
    return str(getattr(stage, "name", None) or getattr(stage, "kind", "?"))


def parameter_groups(model: nn.Module) -> dict[str, set[str]]:
    """Split the parameter names of `model` (as in `model.named_parameters()`) into the groups
    "head" (under model.heads), "lora" (LoRA parameters of model.backbone) and "backbone" (the rest of
    model.backbone). Parameters outside backbone and heads belong to no group."""
    names = [n for n, _ in model.named_parameters()]
    lora = {f"backbone.{n}" for n in lora_parameter_names(model.backbone)}
    return {
        "head": {n for n in names if n.startswith("heads.")},
        "lora": lora,
        "backbone": {n for n in names if n.startswith("backbone.") and n not in lora},
    }


def _block_indices(stage: Any, num_blocks: int) -> list[int] | None:
    """Block indices an unfreeze stage opens; None means "all" (embeddings and norms included)."""
    blocks = getattr(stage, "blocks", "all")
    where = f"stage {_stage_name(stage)!r} (unfreeze)"
    if blocks == "all":
        return None
    if isinstance(blocks, bool):
        pass
    elif isinstance(blocks, int):
        if 1 <= blocks <= num_blocks:
            return list(range(num_blocks - blocks, num_blocks))
        raise ValueError(
            f"{where}: blocks={blocks} is out of range; the backbone has {num_blocks} blocks, use 1..{num_blocks}"
        )
    elif isinstance(blocks, Sequence) and not isinstance(blocks, str):
        bad = [b for b in blocks if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < num_blocks]
        if bad or not blocks:
            raise ValueError(
                f"{where}: blocks={list(blocks)} invalid; give a non-empty list of block indices in 0..{num_blocks - 1}"
            )
        return sorted(set(blocks))
    raise ValueError(
        f"{where}: blocks={blocks!r} invalid; use 'all', an int (the last N blocks) or a list of indices"
    )


def stage_parameter_names(model: nn.Module, stage: Any) -> dict[str, set[str]]:
    """The parameter names each group trains in `stage` (empty groups omitted); validates kind and blocks."""
    kind = getattr(stage, "kind", None)
    if kind not in STAGE_KINDS:
        raise ValueError(
            f"stage {_stage_name(stage)!r}: unknown kind {kind!r}; valid kinds: {', '.join(STAGE_KINDS)}"
        )
    groups = parameter_groups(model)
    chosen: dict[str, set[str]] = {"head": groups["head"]}
    if kind == "lora":
        if not groups["lora"]:
            raise ValueError(
                f"stage {_stage_name(stage)!r} (lora): the backbone has no LoRA adapters; configure lora "
                "(add_lora(backbone, ...) or `lora: {rank: 8}` in the job spec) or use a probe/unfreeze stage"
            )
        chosen["lora"] = groups["lora"]
    elif kind == "unfreeze":
        backbone = model.backbone
        indices = _block_indices(stage, int(backbone.num_blocks))
        if indices is None:
            base = groups["backbone"]
        else:
            prefixes = tuple(f"backbone.{backbone.block_names[i]}." for i in indices)
            base = {n for n in groups["backbone"] if n.startswith(prefixes)}
        chosen["backbone"] = base
        chosen["lora"] = groups["lora"]
    return {g: names for g, names in chosen.items() if names}


def apply_stage(model: nn.Module, stage: Any) -> list[dict[str, Any]]:
    """Set requires_grad so that exactly the parameters of `stage` train; return their optimizer groups.

    Returns a list of torch param groups, in the order head, lora, backbone, without empty groups:
        {"name": "head" | "lora" | "backbone", "params": [Parameter, ...], "lr": float, "weight_decay": float}
    Raises ValueError for an unknown kind, bad blocks, a lora stage without LoRA, or a missing lr.
    """
    chosen = stage_parameter_names(model, stage)
    lrs = dict(getattr(stage, "lr", None) or {})
    missing = [g for g in GROUPS if g in chosen and g not in lrs]
    if missing:
        raise ValueError(
            f"stage {_stage_name(stage)!r} ({stage.kind}) trains {list(chosen)} but has no lr for {missing}; "
            f"add lr.{missing[0]}: <float>"
        )
    weight_decay = float(getattr(stage, "weight_decay", 0.0) or 0.0)
    trainable = set().union(*chosen.values())
    params: dict[str, list[nn.Parameter]] = {g: [] for g in chosen}
    group_of = {n: g for g, names in chosen.items() for n in names}
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
        if name in group_of:
            params[group_of[name]].append(param)
    return [
        {"name": g, "params": params[g], "lr": float(lrs[g]), "weight_decay": weight_decay}
        for g in GROUPS
        if g in params
    ]


def trainable_names_union(model: nn.Module, stages: Iterable[Any]) -> set[str]:
    """Names of every parameter trainable in at least one of `stages` (validated like `apply_stage`).

    This is the set of weights a plan can change, i.e. what a checkpoint of adapted weights must hold.
    The model's requires_grad flags are left as they were found.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        union: set[str] = set()
        for stage in stages:
            apply_stage(model, stage)
            union.update(n for n, p in model.named_parameters() if p.requires_grad)
        return union
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
