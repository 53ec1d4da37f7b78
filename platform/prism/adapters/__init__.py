"""LoRA for vision backbones with peft: inject, choose what trains per stage, report, save/load, merge.

add_lora(backbone, rank=8, alpha=16, dropout=0.0, last_k=None, targets=("attn",)) -> backbone
apply_stage(model, stage) -> list[param group]      # model has .backbone and .heads
trainable_names_union(model, stages) -> set[str]
trainable_report(model) -> str
adapted_state_dict / save_adapted / load_adapted, save_lora / load_lora   (safetensors)
merge_lora(model) -> model
"""

from prism.adapters.io import LoadResult, adapted_state_dict, load_adapted, load_lora, save_adapted, save_lora
from prism.adapters.lora import add_lora, has_lora, lora_parameter_names
from prism.adapters.merge import merge_lora
from prism.adapters.report import trainable_report
from prism.adapters.stages import (
    GROUPS,
    STAGE_KINDS,
    apply_stage,
    parameter_groups,
    stage_parameter_names,
    trainable_names_union,
)
from prism.adapters.targets import LORA_TARGETS, LoraTargets, TargetSpec, build_targets, valid_target_kinds

__all__ = [
    "GROUPS",
    "LORA_TARGETS",
    "STAGE_KINDS",
    "LoadResult",
    "LoraTargets",
    "TargetSpec",
    "adapted_state_dict",
    "add_lora",
    "apply_stage",
    "build_targets",
    "has_lora",
    "load_adapted",
    "load_lora",
    "lora_parameter_names",
    "merge_lora",
    "parameter_groups",
    "save_adapted",
    "save_lora",
    "stage_parameter_names",
    "trainable_names_union",
    "trainable_report",
    "valid_target_kinds",
]
