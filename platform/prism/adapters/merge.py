"""Fold LoRA adapters into the base weights and remove the LoRA layers (peft merge-and-unload).

peft's `merge_and_unload` lives on `PeftModel` / `LoraModel`, which `inject_adapter_in_model` does not
return; this applies the same per-layer steps to a plain module: each outermost LoRA layer merges
(W <- W + alpha / r * B @ A, checked for NaNs) and is replaced by its base module, using the layer's own
`unload_and_optionally_merge_module` when peft defines one (parameter and multi-head-attention wrappers).
Every site merges: the backbone's LoRA and the head sites of `prism.adapters.sites` alike. After merging,
parameter names are the model's original ones again.
"""

from __future__ import annotations

from peft.tuners.lora import LoraLayer
from peft.utils.other import _get_submodules
from torch import nn

__all__ = ["merge_lora"]


def _outermost_lora_layers(model: nn.Module) -> list[str]:
    names = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    return [n for n in names if not any(n.startswith(f"{outer}.") for outer in names if outer != n)]


def merge_lora(model: nn.Module, safe_merge: bool = True) -> nn.Module:
    """Merge every LoRA layer found in `model` (a backbone, or a model holding one) into its base weights,
    in place, and return `model`.

    The merged model computes the same outputs as before up to float rounding and has no LoRA parameters;
    its backbone's `lora_config` becomes None (the settings move to `merged_lora_config`) and so does its
    heads' `lora_sites` (moved to `merged_lora_sites`).
    A model without LoRA is returned unchanged. safe_merge checks the merged weights for NaN/inf.
    """
    for name in _outermost_lora_layers(model):
        parent, layer, child_name = _get_submodules(model, name)
        if hasattr(layer, "unload_and_optionally_merge_module"):
            base = layer.unload_and_optionally_merge_module(
                merge=True, safe_merge=safe_merge, adapter_names=None
            )
        else:
            layer.merge(safe_merge=safe_merge)
            base = layer.get_base_layer()
        setattr(parent, child_name, base)
    for module in model.modules():
        if getattr(module, "lora_config", None) is not None:
            module.merged_lora_config = module.lora_config
            module.lora_config = None
        if getattr(module, "lora_sites", None):
            module.merged_lora_sites = module.lora_sites
            module.lora_sites = None
        if hasattr(module, "peft_config"):
            del module.peft_config
    return model
