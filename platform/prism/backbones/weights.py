"""Load a checkpoint file into a built backbone, strictly, whatever format it was saved in.

Files: .safetensors (safetensors) or .pth / .pt / .bin (torch.load with weights_only=True, passed
explicitly so that TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn it off: a pickle holding anything but
tensors and plain containers is refused with ValueError, never run), read with timm's `load_state_dict`,
which also unwraps {"state_dict": ...} / {"model": ...} and strips DDP "module." / torch.compile
"_orig_mod." prefixes. Training checkpoints holding {"teacher": ...} (DINO, DINOv2) keep the teacher
backbone. A leading "backbone." (a task model's state dict) and "model." (a `Backbone`'s own state dict)
are stripped.

Formats per family, converted by the libraries' own helpers:
  timm_vit   timm keys; original facebookresearch/dinov2 keys (cls_token + pos_embed with the class
             position, register_tokens, mask_token, mlp.w12 / mlp.w3 for ViT-g, chunked
             "blocks.C.N." blocks); original DINO keys (timm-compatible). Converted by
             `timm.models.vision_transformer.checkpoint_filter_fn`, which also resamples pos_embed.
             A classifier "head.*" is dropped (the backbone has no head).
  timm_eva   DINOv3: timm keys (of the `_qkvb` variants, or of the variants without qkv bias, whose bias is
             then zero); original facebookresearch/dinov3 keys (storage_tokens, ls1.gamma, a qkv.bias
             split into q / v bias with k's checked to be zero, mlp.w1 / w2 / w3 for SwiGLU, rope
             periods and masks dropped). Converted by `timm.models.eva.checkpoint_filter_fn`.
  open_clip  a full CLIP state dict ("visual.*" keys, text tower and logit_scale ignored) or a
             visual-only state dict. pos embeddings are resized by `open_clip.model.resize_pos_embed`.
             The image projection "proj" (C, D) is required and loaded with the rest: the backbone
             keeps it to return "embedding" (visual-only files saved before it was kept lack it and
             are refused as missing "proj").
  sam        an official SAM checkpoint (its "image_encoder.*" keys; the prompt encoder and mask decoder
             are ignored) or the encoder's own keys; the position table and the global blocks' relative
             positions are resampled to another img_size (`prism.backbones.sam.sam_state`).
Every tensor the backbone holds must be present with the right shape and nothing else may remain,
otherwise ValueError names the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path
from types import SimpleNamespace

import torch
from open_clip.model import resize_pos_embed
from timm.models import clean_state_dict
from timm.models import load_state_dict as timm_load_state_dict
from timm.models.eva import checkpoint_filter_fn as eva_checkpoint_filter_fn
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from prism.backbones.base import Backbone, is_lora_parameter, state_dict_sha256

StateDict = dict[str, torch.Tensor]
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+)")


def read_checkpoint(path: str | PathLike[str]) -> StateDict:
    """Read a checkpoint file into a flat name -> tensor dict (wrappers and DDP prefixes removed)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"weights file {str(path)!r} does not exist; point `weights` at a local checkpoint file"
        )
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(
            f"weights file {str(path)!r} has suffix {path.suffix!r}; use one of {', '.join(WEIGHT_SUFFIXES)}"
        )
    try:
        state = timm_load_state_dict(str(path), use_ema=False, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as exc:  # timm re-raises torch's refusal as RuntimeError
        refusal = exc if isinstance(exc, pickle.UnpicklingError) else exc.__cause__
        if not isinstance(refusal, pickle.UnpicklingError):
            raise
        refused = _REFUSED_GLOBAL.search(str(refusal))
        raise ValueError(
            f"weights file {str(path)!r} holds Python objects, not only tensors"
            f"{f' ({refused.group(1)})' if refused else ''}; pickles are loaded with weights_only=True and "
            "never run. Re-save the tensors alone: torch.save(model.state_dict(), path), or as .safetensors"
        ) from None
    return unwrap_state_dict(state)


def unwrap_state_dict(state: Mapping[str, object]) -> StateDict:
    """Take the backbone tensors out of a (training) checkpoint dict; see the module docstring."""
    for key in ("state_dict", "model", "teacher"):
        if isinstance(state.get(key), Mapping):
            state = state[key]
    state = clean_state_dict(dict(state))
    for prefix in ("teacher.backbone.", "backbone."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            break
    if state and all(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items()}
    return dict(state)


def _timm_vit_state(state: StateDict, model: nn.Module) -> StateDict:
    """Any supported ViT format -> keys and shapes of the timm `model` (pos_embed resampled)."""
    state = {_CHUNKED_BLOCK.sub(r"blocks.\1.", k): v for k, v in state.items() if not k.startswith("head.")}
    if "register_tokens" in state and "mask_token" not in state:
        # timm detects the original DINOv2 layout by its mask_token; registers alone mean the same layout
        state["mask_token"] = torch.zeros(1, state["register_tokens"].shape[-1])
    return checkpoint_filter_fn(state, model)


def _timm_eva_state(state: StateDict, model: nn.Module) -> StateDict:
    """DINOv3 in timm's or the original layout -> keys of the timm Eva `model` (`_qkvb` attention)."""
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    for key, value in state.items():
        # timm keeps the q and v thirds of an original qkv.bias: k's third must be zero (DINOv3's bias_mask)
        if key.endswith("attn.qkv.bias") and value.shape[-1] % 3 == 0 and value.chunk(3, dim=-1)[1].any():
            raise ValueError(
                f"{key} has a non-zero key bias; DINOv3 attention has none (its bias_mask zeroes it), so these "
                "weights are not DINOv3's"
            )
    converted = eva_checkpoint_filter_fn(state, model)
    if not any(k.endswith(("q_bias", "v_bias", "qkv.bias")) for k in state):
        # a checkpoint of timm's variants without qkv bias: their bias is zero
        for name, param in model.named_parameters():
            if name.endswith(("attn.q_bias", "attn.v_bias")) and name.rsplit(".", 1)[0] + ".qkv.weight" in converted:
                converted[name] = torch.zeros_like(param, device="cpu")
    return converted


def _open_clip_state(state: StateDict, visual: nn.Module) -> StateDict:
    """Full CLIP or visual-only open_clip state dict -> keys of the visual tower (proj included)."""
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    state = dict(state)
    if "positional_embedding" in state:
        wrapped = {"visual.positional_embedding": state["positional_embedding"]}
        resize_pos_embed(wrapped, SimpleNamespace(visual=visual))
        state["positional_embedding"] = wrapped["visual.positional_embedding"]
    return state


def _sam_state(state: StateDict, model: nn.Module) -> StateDict:
    from prism.backbones.sam import sam_state

    return sam_state(state, model)


CONVERTERS: dict[str, Callable[[StateDict, nn.Module], StateDict]] = {
    "timm_vit": _timm_vit_state,
    "timm_eva": _timm_eva_state,
    "open_clip": _open_clip_state,
    "sam": _sam_state,
}


def _short(names: list[str], limit: int = 12) -> str:
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def load_state_dict_strict(module: nn.Module, state: Mapping[str, object], what: str) -> None:
    """`module.load_state_dict(state, strict=True)` with a ValueError naming every key problem first."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} (model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and (not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k].shape)
    )
    if missing or unexpected or mismatched:
        problems = [
            f"missing keys: {_short(missing)}" if missing else "",
            f"unexpected keys: {_short(unexpected)}" if unexpected else "",
            f"shape mismatches: {_short(mismatched)}" if mismatched else "",
        ]
        raise ValueError(
            f"{what} does not match the architecture; "
            + "; ".join(p for p in problems if p)
            + ". Check that the checkpoint is for this backbone (and its overrides)."
        )
    module.load_state_dict(state, strict=True)


def load_weights(backbone: Backbone, source: str | PathLike[str] | Mapping[str, torch.Tensor]) -> Backbone:
    """Load `source` (a checkpoint path or a state dict) into `backbone` strictly; updates weights_sha256.

    Must run before LoRA adapters are added (RuntimeError otherwise). Returns the backbone.
    """
    if any(is_lora_parameter(n) for n, _ in backbone.named_parameters()):
        raise RuntimeError(f"{backbone.name}: load base weights before adding LoRA adapters")
    if isinstance(source, Mapping):
        state, what = unwrap_state_dict(source), f"state dict for {backbone.name}"
    else:
        state, what = read_checkpoint(source), f"weights file {str(source)!r} for {backbone.name}"
    assert backbone.family in CONVERTERS, backbone.family
    state = CONVERTERS[backbone.family](state, backbone.model)
    load_state_dict_strict(backbone.model, state, what)
    backbone.weights_sha256 = state_dict_sha256(backbone)
    return backbone
