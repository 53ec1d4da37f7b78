"""Where LoRA goes: the table of target suffixes per backbone family and the peft targets built from it.

Each entry names, inside one transformer block, either modules (wrapped by peft's `lora.Linear`) or
parameters (wrapped by peft's `lora.ParamWrapper`, i.e. LoRA through `target_parameters`):

    family     kind   modules                      parameters
    timm_vit   attn   attn.qkv, attn.proj          -
    timm_vit   mlp    mlp.fc1, mlp.fc2             -
    timm_eva   attn   attn.qkv, attn.proj          -
    timm_eva   mlp    mlp.fc1, mlp.fc2, or for SwiGLU blocks (DINOv3 S+ / H+) mlp.fc1_g, mlp.fc1_x, mlp.fc2
    open_clip  attn   -                            attn.in_proj_weight   (q, k and v projections)
    open_clip  mlp    mlp.c_fc, mlp.c_proj         -
    sam        attn   attn.qkv, attn.proj          -
    sam        mlp    mlp.lin1, mlp.lin2           -

open_clip attention is an `nn.MultiheadAttention`. peft's dedicated MHA layer adapts in_proj and out_proj,
but it does so by deleting the base weights and re-creating them around every forward: the frozen base
weights drift by float rounding ((W + dW) - dW) on each call, their `nn.Parameter` objects are replaced
with frozen copies, and no gradient reaches them, so an unfreeze stage could not train the attention weights
of adapted blocks. LoRA on the `out_proj` module alone has no effect at all, because `nn.MultiheadAttention`
reads `out_proj.weight` without calling its forward. Targeting the `in_proj_weight` parameter keeps the base
weights exact, trainable and in place, and merges like any other LoRA layer; the cost is that `out_proj`
is not adapted and that dropout cannot be applied (the update is added to the weight, not to activations).

A kind may list `variants`: alternative module sets for blocks of one family that differ in layout (a
plain MLP or a SwiGLU one); the first set whose modules all exist in the adapted blocks is used.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

__all__ = [
    "LORA_TARGETS",
    "LoraTargets",
    "TargetSpec",
    "adapted_blocks",
    "build_targets",
    "normalize_kinds",
    "valid_target_kinds",
]


@dataclass(frozen=True)
class TargetSpec:
    """Suffixes (relative to a block) of the modules and parameters one target kind adapts.

    `variants`, when given, replaces `modules` by alternatives tried in order (see the module docstring).
    """

    modules: tuple[str, ...] = ()
    variants: tuple[tuple[str, ...], ...] = ()
    parameters: tuple[str, ...] = ()
    supports_dropout: bool = True


LORA_TARGETS: dict[str, dict[str, TargetSpec]] = {
    "timm_vit": {
        "attn": TargetSpec(modules=("attn.qkv", "attn.proj")),
        "mlp": TargetSpec(modules=("mlp.fc1", "mlp.fc2")),
    },
    "timm_eva": {
        "attn": TargetSpec(modules=("attn.qkv", "attn.proj")),
        "mlp": TargetSpec(variants=(("mlp.fc1", "mlp.fc2"), ("mlp.fc1_g", "mlp.fc1_x", "mlp.fc2"))),
    },
    "open_clip": {
        "attn": TargetSpec(parameters=("attn.in_proj_weight",), supports_dropout=False),
        "mlp": TargetSpec(modules=("mlp.c_fc", "mlp.c_proj")),
    },
    "sam": {
        "attn": TargetSpec(modules=("attn.qkv", "attn.proj")),
        "mlp": TargetSpec(modules=("mlp.lin1", "mlp.lin2")),
    },
}


@dataclass(frozen=True)
class LoraTargets:
    """What to hand to `peft.LoraConfig`, plus the fully qualified names it must hit.

    target_modules: a regex peft full-matches against module names ("" = no module targets).
    target_parameters: fully qualified parameter names (peft matches them exactly).
    module_names: the module names `target_modules` must match, one per (block, suffix).
    blocks: the adapted block indices, ascending.
    supports_dropout: False when a parameter target cannot apply LoRA dropout.
    """

    target_modules: str
    target_parameters: tuple[str, ...]
    module_names: tuple[str, ...]
    blocks: tuple[int, ...]
    supports_dropout: bool


def _family_table(family: str) -> dict[str, TargetSpec]:
    try:
        return LORA_TARGETS[family]
    except KeyError:
        raise ValueError(
            f"no LoRA targets for backbone family {family!r}; valid families: {', '.join(sorted(LORA_TARGETS))}"
        ) from None


def valid_target_kinds(family: str) -> list[str]:
    """Sorted target kinds ("attn", "mlp", ...) available for `family`; ValueError for an unknown family."""
    return sorted(_family_table(family))


def normalize_kinds(family: str, targets: str | Iterable[str]) -> tuple[str, ...]:
    """Validate target kinds for `family` and return them deduplicated, in the order given."""
    table = _family_table(family)
    kinds = (targets,) if isinstance(targets, str) else tuple(targets)
    if not kinds:
        raise ValueError(f"LoRA targets are empty; choose some of {', '.join(sorted(table))}")
    unknown = [k for k in kinds if k not in table]
    if unknown:
        raise ValueError(
            f"unknown LoRA target kind(s) {unknown} for family {family!r}; valid kinds: {', '.join(sorted(table))}"
        )
    return tuple(dict.fromkeys(kinds))


def adapted_blocks(num_blocks: int, last_k: int | None) -> tuple[int, ...]:
    """Indices of the last `last_k` blocks (all blocks for None); ValueError unless 1 <= last_k <= num_blocks."""
    if last_k is None:
        return tuple(range(num_blocks))
    if isinstance(last_k, bool) or not isinstance(last_k, int) or not 1 <= last_k <= num_blocks:
        raise ValueError(
            f"last_k={last_k!r} is out of range: the backbone has {num_blocks} blocks, "
            f"use an int in 1..{num_blocks} or None for all blocks"
        )
    return tuple(range(num_blocks - last_k, num_blocks))


def _alternation(names: Sequence[str]) -> str:
    return "(?:" + "|".join(re.escape(n) for n in names) + ")"


def _module_suffixes(spec: TargetSpec, block_names: Sequence[str], modules: dict[str, nn.Module]) -> tuple[str, ...]:
    """`spec.modules`, or the first of `spec.variants` present in every adapted block (else the first, so
    that the missing-target check below names what was expected)."""
    for variant in spec.variants:
        if all(f"{b}.{s}" in modules for b in block_names for s in variant):
            return variant
    return spec.variants[0] if spec.variants else spec.modules


def build_targets(
    backbone: nn.Module, targets: str | Iterable[str] = ("attn",), last_k: int | None = None
) -> LoraTargets:
    """peft targets for the `targets` kinds in the last `last_k` blocks of `backbone`.

    Uses the backbone's `family`, `num_blocks` and `block_names` (module names relative to the backbone).
    Checks that every module / parameter named by the table exists, so that a table that does not fit the
    model fails here instead of silently adapting less.
    """
    family = backbone.family
    table = _family_table(family)
    kinds = normalize_kinds(family, targets)
    blocks = adapted_blocks(int(backbone.num_blocks), last_k)
    block_names = [backbone.block_names[i] for i in blocks]
    specs = [table[k] for k in kinds]
    modules = dict(backbone.named_modules())
    module_suffixes = [s for spec in specs for s in _module_suffixes(spec, block_names, modules)]
    param_suffixes = [s for spec in specs for s in spec.parameters]

    module_names = tuple(f"{b}.{s}" for b in block_names for s in module_suffixes)
    parameter_names = tuple(f"{b}.{s}" for b in block_names for s in param_suffixes)
    params = dict(backbone.named_parameters())
    missing = [n for n in module_names if n not in modules] + [n for n in parameter_names if n not in params]
    if missing:
        raise ValueError(
            f"backbone {getattr(backbone, 'name', type(backbone).__name__)!r} (family {family!r}) lacks the LoRA "
            f"targets {missing[:4]}{' ...' if len(missing) > 4 else ''}; it is not a {family} model as the "
            "target table expects"
        )
    regex = f"{_alternation(block_names)}\\.{_alternation(module_suffixes)}" if module_suffixes else ""
    return LoraTargets(
        target_modules=regex,
        target_parameters=parameter_names,
        module_names=module_names,
        blocks=blocks,
        supports_dropout=all(spec.supports_dropout for spec in specs),
    )
