"""LoRA sites: named places in a model that carry LoRA adapters, the backbone's and those inside the heads.

A model is `model.backbone` (LoRA from `add_lora`, settings in `backbone.lora_config`) + `model.heads`.
Besides the backbone, a task can adapt nn.Linear modules inside its heads, e.g. the q/k/v/out projections
of SAM's mask-decoder attention, as a named *head site*:

    add_head_lora(model, "decoder", module="decoder", targets=("q_proj", "k_proj", "v_proj", "out_proj"))
        -> ["heads.decoder.attn.q_proj", ...]               the adapted modules, names relative to model
    lora_sites(model)
        -> {"backbone": "backbone.", "decoder": "heads.decoder."}   site -> parameter-name prefix

    head_sites(model) -> {site: record}                     the records below ({} without head sites)
    inject_recorded_sites(model, records) -> [site added]   re-inject recorded sites the model lacks (load)
    site_differences(recorded, present) -> {site: {setting: (recorded, present)}}

The site "backbone" exists when the backbone has LoRA. Head sites are recorded on the heads as

    model.heads.lora_sites = {site: {"module": "decoder", "targets": ["q_proj", ...], "rank": 8,
                                     "alpha": 16.0, "dropout": 0.0, "modules": ["heads.decoder.attn.q_proj", ...]}}

which is what `save_adapted` writes and `load_adapted` re-injects ("modules" are relative to the model).
Head sites adapt disjoint modules, so every parameter belongs to one site at most. peft injects into
`model.heads` with a regex that full-matches exactly the chosen module names. Parameter names change as
for the backbone (see `prism.adapters.lora`):

    heads.decoder.attn.q_proj.weight  ->  heads.decoder.attn.q_proj.base_layer.weight        (out, in) base
                                          heads.decoder.attn.q_proj.lora_A.default.weight    (r, in)
                                          heads.decoder.attn.q_proj.lora_B.default.weight    (out, r), zero init
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from prism.adapters.lora import ADAPTER_NAME, _check_injected, _check_number, has_lora, lora_parameter_names

__all__ = [
    "BACKBONE_SITE",
    "SITE_NAME",
    "add_head_lora",
    "head_sites",
    "inject_recorded_sites",
    "lora_sites",
    "site_differences",
]

BACKBONE_SITE = "backbone"
SITE_NAME = re.compile(r"[a-z][a-z0-9_]*")


def _preview(names: Sequence[str], n: int = 8) -> str:
    names = sorted(names)
    if not names:
        return "none"
    return ", ".join(names[:n]) + (f" ... ({len(names)} in all)" if len(names) > n else "")


def head_sites(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The head-site records `model.heads.lora_sites` ({} when there are none; see the module docstring)."""
    heads = getattr(model, "heads", None)
    return dict(getattr(heads, "lora_sites", None) or {})


def lora_sites(model: nn.Module) -> dict[str, str]:
    """Site name -> prefix of its parameter names in `model.named_parameters()`.

    "backbone" -> "backbone." when the backbone has LoRA parameters; each head site -> "heads.<module>."
    ("heads." for module ""). Order: "backbone" first, then the head sites sorted by name.
    """
    sites: dict[str, str] = {}
    backbone = getattr(model, "backbone", None)
    if backbone is not None and lora_parameter_names(backbone):
        sites[BACKBONE_SITE] = "backbone."
    for site, record in sorted(head_sites(model).items()):
        sites[site] = f"heads.{record['module']}." if record["module"] else "heads."
    return sites


def _overlaps(a: str, b: str) -> bool:
    """True when module paths `a` and `b` (relative to the heads, "" = all of them) share parameters."""
    return a == b or not a or not b or a.startswith(f"{b}.") or b.startswith(f"{a}.")


def _candidates(heads: nn.Module, module: str) -> list[str]:
    """Names (relative to the heads) of the nn.Linear modules under `module` that LoRA can adapt.

    Linear modules owned by an nn.MultiheadAttention are left out: it reads their weights without calling
    their forward, so LoRA on them would have no effect.
    """
    names = []
    modules = dict(heads.named_modules())
    for name, mod in modules.items():
        inside = not module or name == module or name.startswith(f"{module}.")
        parent = modules.get(name.rpartition(".")[0]) if "." in name else heads
        if inside and name and isinstance(mod, nn.Linear) and not isinstance(parent, nn.MultiheadAttention):
            names.append(name)
    return names


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith(f".{target}")


def add_head_lora(
    model: nn.Module,
    site: str,
    module: str,
    targets: Sequence[str],
    rank: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
) -> list[str]:
    """Inject peft LoRA into nn.Linear modules of `model.heads.<module>` as the head site `site`, in place.

    Args:
        model: has `.heads` (an nn.Module).
        site: site name, matching [a-z][a-z0-9_]*, not "backbone" and not present yet.
        module: dotted path of a submodule of `model.heads`; "" for all of the heads. Must not overlap the
            module of another head site.
        targets: dotted name suffixes of the Linear modules to adapt ("q_proj" matches
            "decoder.attn.q_proj"; "attn.q_proj" matches it too, "proj" does not). Each must match one or
            more nn.Linear under `module`.
        rank, alpha, dropout: as for `add_lora` (rank >= 1, alpha > 0, dropout in [0, 1)).

    Returns the adapted module names relative to `model`, sorted ("heads.decoder.attn.q_proj", ...).
    LoRA parameters come out trainable, other parameters keep their requires_grad (stages decide). Records
    the settings in `model.heads.lora_sites[site]`. Raises ValueError naming what exists for a bad site
    name, a present or overlapping site, an unknown module path or targets that match no Linear module.
    """
    heads = getattr(model, "heads", None)
    if not isinstance(heads, nn.Module):
        raise ValueError(
            f"{type(model).__name__} has no .heads module to adapt; head sites live in model.heads"
        )
    sites = head_sites(model)
    if not isinstance(site, str) or not SITE_NAME.fullmatch(site) or site == BACKBONE_SITE:
        raise ValueError(
            f"LoRA site name {site!r} is invalid; use lowercase letters, digits and '_' starting with a letter "
            f"([a-z][a-z0-9_]*), other than {BACKBONE_SITE!r} (the backbone's site)"
        )
    if site in sites:
        raise ValueError(
            f"LoRA site {site!r} is already present (module {sites[site]['module']!r}); choose another name, "
            "or merge_lora first"
        )
    module = str(module)
    submodules = dict(heads.named_modules())
    if module not in submodules:
        raise ValueError(
            f"model.heads has no module {module!r}; modules there: {_preview([n for n in submodules if n])} "
            "(or '' for all of the heads)"
        )
    for other, record in sorted(sites.items()):
        if _overlaps(module, record["module"]):
            raise ValueError(
                f"LoRA site {site!r} on module {module!r} overlaps site {other!r} (module {record['module']!r}); "
                "head sites must adapt disjoint modules"
            )
    if has_lora(submodules[module]):
        raise ValueError(
            f"model.heads.{module or '<all>'} already holds LoRA layers that no site records; head LoRA must "
            "come from add_head_lora"
        )
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(
            f"LoRA targets {list(targets)!r} invalid; give non-empty module name suffixes like 'q_proj'"
        )
    _check_number("rank", rank, low=1, high=None, integer=True, hint="use an int >= 1")
    _check_number("alpha", alpha, low=1e-12, high=None, integer=False, hint="use a number > 0")
    _check_number("dropout", dropout, low=0.0, high=1.0, integer=False, hint="use a float in [0, 1)")

    linears = _candidates(heads, module)
    unmatched = [t for t in targets if not any(_matches(n, t) for n in linears)]
    if unmatched:
        raise ValueError(
            f"LoRA target(s) {unmatched} match no nn.Linear under model.heads.{module or '<all>'}; Linear "
            f"modules there: {_preview(linears)}"
        )
    chosen = sorted(n for n in linears if any(_matches(n, t) for t in targets))

    before = [(p, p.requires_grad) for p in heads.parameters()]
    had_config = hasattr(heads, "peft_config")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=float(dropout),
        target_modules="|".join(re.escape(n) for n in chosen),  # peft full-matches: exactly these modules
        bias="none",
    )
    inject_adapter_in_model(config, heads, adapter_name=ADAPTER_NAME)
    for param, flag in before:  # peft freezes every non-LoRA parameter; stages own that decision
        param.requires_grad_(flag)
    if not had_config:
        # peft records its config on the module it injected into; a second site's injection into the same
        # heads would then warn that it adds a second adapter. The settings live in `lora_sites` instead.
        del heads.peft_config
    _check_injected(heads, chosen, ())

    adapted = [f"heads.{n}" for n in chosen]
    sites[site] = {
        "module": module,
        "targets": list(targets),
        "rank": int(rank),
        "alpha": float(alpha),
        "dropout": float(dropout),
        "modules": adapted,
    }
    heads.lora_sites = sites
    return adapted


def inject_recorded_sites(model: nn.Module, recorded: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Add each site of `recorded` (records as in `model.heads.lora_sites`) that `model` lacks; returns
    the names of the sites added. Sites present in both are left alone (compare them with `site_differences`)."""
    present = head_sites(model)
    added = []
    for site, record in sorted(recorded.items()):
        if site in present:
            continue
        add_head_lora(
            model,
            site,
            module=record["module"],
            targets=record["targets"],
            rank=record["rank"],
            alpha=record["alpha"],
            dropout=record.get("dropout", 0.0),
        )
        added.append(site)
    return added


_COMPARED = ("module", "targets", "rank", "alpha", "modules")  # settings that change the weights' meaning


def site_differences(
    recorded: Mapping[str, Mapping[str, Any]], present: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, tuple[Any, Any]]]:
    """{site: {setting: (recorded, present)}} for the sites in both whose settings differ."""
    differ = {}
    for site in sorted(set(recorded) & set(present)):
        a, b = recorded[site], present[site]
        diff = {k: (a.get(k), b.get(k)) for k in _COMPARED if a.get(k) != b.get(k)}
        if diff:
            differ[site] = diff
    return differ
