"""Training stages: which parameters train, and the optimizer param groups that train them.

A model has `.backbone` (a Backbone, possibly with LoRA from `add_lora`) and `.heads` (an nn.Module,
possibly with LoRA head sites from `add_head_lora`). Its parameters fall into the groups

    head            parameters of the heads outside every head site
    head.<site>     base (non-LoRA) parameters of a head site's module, e.g. head.decoder
    lora.<site>     LoRA parameters of a site: lora.backbone, lora.decoder, ...
    backbone        base (non-LoRA) parameters of the backbone

(`parameter_groups`); every parameter of backbone and heads is in exactly one. A stage is any object with

    kind          "probe" | "lora" | "unfreeze"
    lr            dict lr key -> float; the keys (`stage_lr_keys(model)` lists those valid for a model):
                    "head", "backbone", "head.<site>"   that group
                    "lora"                              every lora.<site> group without a key of its own
                    "lora.<site>"                       that site's LoRA, overriding "lora"
    blocks        unfreeze only: "all" | int N (the last N blocks) | list[int] (those blocks)
    frozen_blocks unfreeze only, instead of blocks: int N (the first N stay frozen) | list[int] (those stay
                  frozen); every other block trains, the embeddings stay frozen; None (or absent) = use blocks
    lora_sites    optional list of site names whose LoRA trains; None (or absent) = every site present
    weight_decay  float, 0.0 when absent
    name          optional display name (defaults to kind)

and trains exactly

    probe     head
    lora      head + lora.<site> for the selected sites
    unfreeze  head + the backbone base parameters of the chosen blocks ("all": every one, embeddings and
              final norms included) + lora.<site> for the selected sites
    and, in every kind, head.<site> for each "head.<site>" key of lr (a head site's base stays frozen
    unless its lr is given).

Groups come in the order head, head.* (sorted), lora.* (sorted), backbone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from prism.adapters.lora import lora_parameter_names
from prism.adapters.sites import head_sites, lora_sites

__all__ = [
    "GROUPS",
    "STAGE_KINDS",
    "apply_stage",
    "parameter_groups",
    "stage_lr_keys",
    "stage_parameter_names",
    "trainable_names_union",
    "bundle_names",
]

STAGE_KINDS = ("probe", "lora", "unfreeze")
GROUPS = ("head", "lora", "backbone")  # group families: every group is "<family>" or "<family>.<site>"


def _stage_name(stage: Any) -> str:
    return str(getattr(stage, "name", None) or getattr(stage, "kind", "?"))


def _order(name: str) -> tuple[int, str]:
    """Sort key of a group or lr key: head, head.<site>..., lora, lora.<site>..., backbone."""
    family, _, site = name.partition(".")
    return {"head": 0, "lora": 2, "backbone": 4}[family] + bool(site), name


FROZEN_PREFIX = "heads.frozen."
"""Parameters under the heads' ``frozen`` submodule: part of the model, never trained."""


def parameter_groups(model: nn.Module) -> dict[str, set[str]]:
    """Split the parameter names of `model` (as in `model.named_parameters()`) into the groups of the
    module docstring: "head", "head.<site>" per head site, "lora.<site>" per site (incl. "lora.backbone"
    when the backbone has LoRA) and "backbone", in that order. Parameters outside backbone and heads, and
    those of the heads' ``frozen`` submodule (a frozen component a task's heads run, e.g. a CLIP text tower),
    belong to no group: no stage trains them. ValueError when the heads hold LoRA layers that no site records."""
    names = [n for n, _ in model.named_parameters()]
    heads = getattr(model, "heads", None)
    lora = {f"backbone.{n}" for n in lora_parameter_names(model.backbone)}
    lora |= {f"heads.{n}" for n in lora_parameter_names(heads)} if isinstance(heads, nn.Module) else set()
    sites = lora_sites(model)
    recorded = head_sites(model)
    head_prefixes = {s: p for s, p in sites.items() if s in recorded}

    groups: dict[str, set[str]] = {"head": set(), "backbone": set()}
    groups.update({f"head.{s}": set() for s in head_prefixes})
    groups.update({f"lora.{s}": set() for s in sites})
    stray = []
    for name in names:
        if name.startswith(FROZEN_PREFIX):
            continue
        site = next((s for s, p in sites.items() if name.startswith(p)), None)
        if name in lora:
            if site is None:
                stray.append(name)
            else:
                groups[f"lora.{site}"].add(name)
        elif site is not None and site in head_prefixes:
            groups[f"head.{site}"].add(name)
        elif name.startswith("heads."):
            groups["head"].add(name)
        elif name.startswith("backbone."):
            groups["backbone"].add(name)
    if stray:
        raise ValueError(
            f"the heads hold LoRA parameters that no LoRA site records ({sorted(stray)[:4]}); inject head LoRA "
            "with add_head_lora(model, site, module, targets) so that stages, save and load know the site"
        )
    return {g: groups[g] for g in sorted(groups, key=_order)}


def stage_lr_keys(model: nn.Module) -> list[str]:
    """The lr keys a stage may use for `model`, in group order: "head", "head.<site>" per head site,
    "lora" (when any site has LoRA), "lora.<site>" per site, "backbone"."""
    keys = list(parameter_groups(model))
    if any(k.startswith("lora.") for k in keys):
        keys.append("lora")
    return sorted(keys, key=_order)


def _selected_sites(stage: Any, sites: Sequence[str]) -> list[str]:
    """The LoRA sites whose adapters `stage` trains: `stage.lora_sites`, checked, or every site."""
    chosen = getattr(stage, "lora_sites", None)
    if chosen is None:
        return list(sites)
    chosen = [chosen] if isinstance(chosen, str) else list(chosen)
    unknown = [s for s in chosen if s not in sites]
    if unknown:
        raise ValueError(
            f"stage {_stage_name(stage)!r} ({stage.kind}): lora_sites names unknown site(s) {unknown}; this "
            f"model's LoRA sites: {list(sites) or 'none'}"
        )
    return list(dict.fromkeys(chosen))


def _block_indices(stage: Any, num_blocks: int) -> list[int] | None:
    """Block indices an unfreeze stage opens; None means "all" (embeddings and norms included)."""
    blocks = getattr(stage, "blocks", "all")
    where = f"stage {_stage_name(stage)!r} (unfreeze)"
    frozen = getattr(stage, "frozen_blocks", None)
    if frozen is not None:
        if blocks != "all":
            raise ValueError(f"{where}: give blocks (what trains) or frozen_blocks (what stays frozen), not both")
        return [i for i in range(num_blocks) if i not in _frozen_indices(frozen, num_blocks, where)]
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


def _frozen_indices(frozen: Any, num_blocks: int, where: str) -> set[int]:
    """``frozen_blocks`` → the frozen block indices: int N = the first N (0..num_blocks-1), or a list."""
    if isinstance(frozen, int) and not isinstance(frozen, bool):
        if 0 <= frozen < num_blocks:
            return set(range(frozen))
        raise ValueError(f"{where}: frozen_blocks={frozen} is out of range; the backbone has {num_blocks} blocks, "
                         f"freeze 0..{num_blocks - 1} of them (all frozen is a probe or lora stage)")
    if isinstance(frozen, Sequence) and not isinstance(frozen, str):
        bad = [b for b in frozen if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < num_blocks]
        if bad or len(set(frozen)) >= num_blocks:
            raise ValueError(f"{where}: frozen_blocks={list(frozen)} invalid; give block indices in "
                             f"0..{num_blocks - 1}, leaving at least one block to train")
        return set(frozen)
    raise ValueError(f"{where}: frozen_blocks={frozen!r} invalid; use an int (the first N blocks) or a list")


def stage_parameter_names(model: nn.Module, stage: Any) -> dict[str, set[str]]:
    """The parameter names each group trains in `stage`, in group order, empty groups omitted.

    Validates kind, lr keys, lora_sites and blocks (ValueError); lr values are checked by `apply_stage`.
    """
    kind = getattr(stage, "kind", None)
    where = f"stage {_stage_name(stage)!r} ({kind})"
    if kind not in STAGE_KINDS:
        raise ValueError(
            f"stage {_stage_name(stage)!r}: unknown kind {kind!r}; valid kinds: {', '.join(STAGE_KINDS)}"
        )
    groups = parameter_groups(model)
    sites = list(lora_sites(model))
    if kind == "lora" and not sites:
        raise ValueError(
            f"{where}: the model has no LoRA adapters; configure lora (add_lora(backbone, ...) or "
            "`lora: {rank: 8}` in the job spec, add_head_lora(model, ...) for the heads) or use a "
            "probe/unfreeze stage"
        )
    lrs = dict(getattr(stage, "lr", None) or {})
    valid = stage_lr_keys(model)
    unknown = [k for k in lrs if k not in valid]
    if unknown:
        raise ValueError(
            f"{where}: lr key(s) {unknown} name no parameter group of this model; its groups: {list(groups)}; "
            f"accepted lr keys: {valid}"
        )
    selected = _selected_sites(stage, sites)
    if kind == "lora" and not selected:
        raise ValueError(
            f"{where}: lora_sites=[] selects no LoRA site; name some of {sites} or use a probe stage"
        )

    chosen = {"head": groups["head"]}
    chosen.update({g: names for g, names in groups.items() if g.startswith("head.") and g in lrs})
    if kind in ("lora", "unfreeze"):
        chosen.update({f"lora.{s}": groups[f"lora.{s}"] for s in selected})
    if kind == "unfreeze":
        backbone = model.backbone
        indices = _block_indices(stage, int(backbone.num_blocks))
        if indices is None:
            chosen["backbone"] = groups["backbone"]
        else:
            prefixes = tuple(f"backbone.{backbone.block_names[i]}." for i in indices)
            chosen["backbone"] = {n for n in groups["backbone"] if n.startswith(prefixes)}
    return {g: chosen[g] for g in sorted(chosen, key=_order) if chosen[g]}


def _lr(group: str, lrs: dict[str, Any]) -> Any:
    if group.startswith("lora."):
        return lrs.get(group, lrs.get("lora"))
    return lrs.get(group)


def apply_stage(model: nn.Module, stage: Any) -> list[dict[str, Any]]:
    """Set requires_grad so that exactly the parameters of `stage` train; return their optimizer groups.

    Returns a list of torch param groups, in group order (head, head.*, lora.*, backbone), none empty:
        {"name": "head" | "head.<site>" | "lora.<site>" | "backbone", "params": [Parameter, ...],
         "lr": float, "weight_decay": float}
    A lora.<site> group takes lr["lora.<site>"], else lr["lora"]. Raises ValueError for an unknown kind,
    lr key or site, bad blocks, a lora stage without LoRA, or a trained group without an lr.
    """
    chosen = stage_parameter_names(model, stage)
    lrs = dict(getattr(stage, "lr", None) or {})
    missing = list(
        dict.fromkeys("lora" if g.startswith("lora.") else g for g in chosen if _lr(g, lrs) is None)
    )
    if missing:
        hint = " (every LoRA site) or lr.lora.<site> for one site" if missing[0] == "lora" else ""
        raise ValueError(
            f"stage {_stage_name(stage)!r} ({stage.kind}) trains {list(chosen)} but has no lr for {missing}; "
            f"add lr.{missing[0]}: <float>{hint}"
        )
    weight_decay = float(getattr(stage, "weight_decay", 0.0) or 0.0)
    group_of = {n: g for g, names in chosen.items() for n in names}
    params: dict[str, list[nn.Parameter]] = {g: [] for g in chosen}
    for name, param in model.named_parameters():
        param.requires_grad_(name in group_of)
        if name in group_of:
            params[group_of[name]].append(param)
    return [
        {"name": g, "params": params[g], "lr": float(_lr(g, lrs)), "weight_decay": weight_decay}
        for g in chosen
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


def bundle_names(model: nn.Module, stages: Iterable[Any]) -> set[str]:
    """The parameters a bundle or checkpoint of this plan holds: every one some stage trains
    (:func:`trainable_names_union`) and every LoRA parameter of the model.

    A plan that never trains an adapter (a probe-only job of a model with LoRA configured) still builds it,
    and loading needs its tensors: without them the bundle could not be loaded strictly.
    """
    from prism.adapters.lora import lora_parameter_names

    return trainable_names_union(model, stages) | lora_parameter_names(model)
