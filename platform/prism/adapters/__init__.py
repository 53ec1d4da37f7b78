"""LoRA for vision models with peft: inject at named sites, choose what trains per stage, report, save/load, merge.

A model is `.backbone` (a prism Backbone) + `.heads` (a task's nn.Module). LoRA sits at named *sites*:
"backbone" (from `add_lora`) and head sites inside the heads (from `add_head_lora`).

add_lora(backbone, rank=8, alpha=16, dropout=0.0, last_k=None, targets=("attn",)) -> backbone
add_head_lora(model, site, module, targets, rank=8, alpha=16, dropout=0.0) -> list[adapted module name]
lora_sites(model) -> {site: parameter-name prefix}      # {"backbone": "backbone.", "decoder": "heads.decoder."}
parameter_groups(model) -> {group: set[param name]}    # head, head.<site>, lora.<site>, backbone
stage_lr_keys(model) -> list[str]                      # lr keys a stage may use for this model
apply_stage(model, stage) -> list[param group]         # {"name", "params", "lr", "weight_decay"}
stage_parameter_names(model, stage) -> {group: set[param name]}
trainable_names_union(model, stages) -> set[str]
bundle_names(model, stages) -> set[str]                # what a bundle holds: the union + every LoRA tensor
trainable_report(model) -> str
adapted_state_dict / save_adapted / load_adapted, save_lora / load_lora   (safetensors, every site)
merge_lora(model) -> model                             # folds every site
"""

from prism.adapters.io import LoadResult, adapted_state_dict, load_adapted, load_lora, save_adapted, save_lora
from prism.adapters.lora import add_lora, has_lora, lora_parameter_names
from prism.adapters.merge import merge_lora
from prism.adapters.report import trainable_report
from prism.adapters.sites import BACKBONE_SITE, SITE_NAME, add_head_lora, head_sites, lora_sites
from prism.adapters.stages import (
    GROUPS,
    STAGE_KINDS,
    apply_stage,
    bundle_names,
    parameter_groups,
    stage_lr_keys,
    stage_parameter_names,
    trainable_names_union,
)
from prism.adapters.targets import LORA_TARGETS, LoraTargets, TargetSpec, build_targets, valid_target_kinds

__all__ = [
    "BACKBONE_SITE",
    "GROUPS",
    "LORA_TARGETS",
    "SITE_NAME",
    "STAGE_KINDS",
    "LoadResult",
    "LoraTargets",
    "TargetSpec",
    "adapted_state_dict",
    "add_head_lora",
    "add_lora",
    "apply_stage",
    "build_targets",
    "bundle_names",
    "has_lora",
    "head_sites",
    "load_adapted",
    "load_lora",
    "lora_parameter_names",
    "lora_sites",
    "merge_lora",
    "parameter_groups",
    "save_adapted",
    "save_lora",
    "stage_lr_keys",
    "stage_parameter_names",
    "trainable_names_union",
    "trainable_report",
    "valid_target_kinds",
]
