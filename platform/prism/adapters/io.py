"""Save and load adapted weights (heads, LoRA of every site, unfrozen base tensors) as safetensors.

Files hold only the named tensors, under their names in `model.named_parameters()` (or, for the
LoRA-only variants, `backbone.named_parameters()`), plus string metadata:

    prism.lora_config           JSON of `backbone.lora_config` when the backbone has LoRA
    prism.lora_sites            JSON of `model.heads.lora_sites` when the heads have LoRA sites
                                ({site: {module, targets, rank, alpha, dropout, modules}}, see
                                `prism.adapters.sites`); absent in files written before head sites existed
    prism.backbone              backbone name, when known
    prism.base_weights_sha256   `backbone.weights_sha256`, the base the adapters were trained on

Loading into a model without those adapters first injects them with the recorded settings (the backbone's
LoRA when it has none, each recorded head site the heads lack), so a fresh `create_backbone(...)` + heads
can receive a saved adaptation directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from prism.adapters.lora import add_lora, lora_parameter_names
from prism.adapters.sites import head_sites, inject_recorded_sites, site_differences
from prism.adapters.stages import parameter_groups

__all__ = ["LoadResult", "adapted_state_dict", "load_adapted", "load_lora", "save_adapted", "save_lora"]

_LORA_KEY = "prism.lora_config"
_SITES_KEY = "prism.lora_sites"
_BACKBONE_KEY = "prism.backbone"
_SHA_KEY = "prism.base_weights_sha256"
_COMPARED = ("rank", "alpha", "targets", "blocks")  # settings that change the weights' meaning


class LoadResult(NamedTuple):
    """What `load_adapted` did: names the model expected but the file lacked, names it could not place,
    and the file's metadata."""

    missing_keys: list[str]
    unexpected_keys: list[str]
    metadata: dict[str, str]


def _preview(names: Iterable[str], n: int = 6) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" ... ({len(names)} in all)" if len(names) > n else "")


def adapted_state_dict(model: nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """{name: detached parameter} for `names` (from `model.named_parameters()`); ValueError on unknown names.

    The tensors share storage with the model; `save_adapted` copies them.
    """
    params = dict(model.named_parameters())
    names = set(names)
    unknown = names - set(params)
    if unknown:
        raise ValueError(
            f"no parameter(s) named {_preview(unknown)} in the model; use names from named_parameters()"
        )
    return {n: params[n].detach() for n in sorted(names)}


def _backbone_metadata(backbone: nn.Module | None) -> dict[str, str]:
    meta: dict[str, str] = {}
    if backbone is None:
        return meta
    if getattr(backbone, "lora_config", None) and lora_parameter_names(backbone):
        meta[_LORA_KEY] = json.dumps(backbone.lora_config, sort_keys=True)
    if getattr(backbone, "name", None):
        meta[_BACKBONE_KEY] = str(backbone.name)
    if getattr(backbone, "weights_sha256", None):
        meta[_SHA_KEY] = str(backbone.weights_sha256)
    return meta


def _write(
    path: str | PathLike[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> Path:
    # Own contiguous CPU copies: safetensors refuses tied (shared-storage) and non-contiguous tensors.
    owned = {n: t.detach().to("cpu").clone(memory_format=torch.contiguous_format) for n, t in tensors.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(owned, str(path), metadata=dict(metadata))
    return path


def save_adapted(
    path: str | PathLike[str],
    model: nn.Module,
    names: Iterable[str],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write the parameters `names` of `model` (which has .backbone and .heads) to a safetensors file.

    `metadata` (str -> str) is stored next to the LoRA settings of every site and the base hash.
    Returns the path.
    """
    metadata = dict(metadata or {})
    bad = {k: v for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))}
    if bad:
        raise ValueError(f"safetensors metadata must map str to str; convert these entries: {bad}")
    tensors = adapted_state_dict(model, names)
    recorded = _backbone_metadata(getattr(model, "backbone", None))
    sites = head_sites(model)
    if sites:
        recorded[_SITES_KEY] = json.dumps(sites, sort_keys=True)
    return _write(path, tensors, {**metadata, **recorded})


def _read(path: str | PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not Path(path).is_file():
        raise ValueError(f"no adapter file at {path}")
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    return load_file(str(path)), metadata


def _prepare_backbone(backbone: nn.Module, metadata: Mapping[str, str], path: Any, strict: bool) -> None:
    """Inject the recorded LoRA when the backbone has none; check settings and base hash agree."""
    recorded = json.loads(metadata[_LORA_KEY]) if _LORA_KEY in metadata else None
    if recorded is not None and not lora_parameter_names(backbone):
        add_lora(
            backbone,
            rank=recorded["rank"],
            alpha=recorded["alpha"],
            dropout=recorded.get("dropout", 0.0),
            last_k=recorded.get("last_k"),
            targets=recorded["targets"],
        )
    current = getattr(backbone, "lora_config", None)
    if recorded is not None and current:
        differ = {
            k: (recorded.get(k), current.get(k)) for k in _COMPARED if recorded.get(k) != current.get(k)
        }
        if differ:
            raise ValueError(
                f"{path}: LoRA settings differ between file and backbone (file, backbone): {differ}; "
                "build the backbone without LoRA and let the loader inject the recorded adapters"
            )
    sha, own = metadata.get(_SHA_KEY), getattr(backbone, "weights_sha256", None)
    if strict and sha and own and sha != own:
        raise ValueError(
            f"{path}: adapters were trained on base weights {sha[:12]}… but this backbone "
            f"({getattr(backbone, 'name', '?')}) has {own[:12]}…; build it with the same weights, "
            "or pass strict=False to load anyway"
        )


def _prepare_heads(model: nn.Module, metadata: Mapping[str, str], path: Any) -> None:
    """Inject each recorded head site the heads lack; check the settings of every recorded site agree."""
    if _SITES_KEY not in metadata:  # no head sites at save time, or a file from before they existed
        return
    recorded = json.loads(metadata[_SITES_KEY])
    try:
        inject_recorded_sites(model, recorded)
    except ValueError as err:
        raise ValueError(
            f"{path}: cannot inject the recorded LoRA head sites {sorted(recorded)}: {err}"
        ) from None
    differ = site_differences(recorded, head_sites(model))
    if differ:
        raise ValueError(
            f"{path}: LoRA head-site settings differ between file and model (file, model): {differ}; build "
            "the heads without those sites and let the loader inject the recorded adapters"
        )


def _copy_in(
    module: nn.Module, tensors: Mapping[str, torch.Tensor], expected: set[str], strict: bool, path: Any
) -> tuple[list[str], list[str]]:
    params = dict(module.named_parameters())
    unexpected = sorted(set(tensors) - set(params))
    missing = sorted(expected - set(tensors))
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing keys (in the model, not in the file): {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys (in the file, not in the model): {_preview(unexpected)}")
        raise ValueError(
            f"{path}: " + "; ".join(parts) + "; build the same model as at save time or pass strict=False"
        )
    shapes = {
        n: (tuple(t.shape), tuple(params[n].shape))
        for n, t in tensors.items()
        if n in params and t.shape != params[n].shape
    }
    if shapes:
        raise ValueError(f"{path}: shape mismatch (file, model): {dict(sorted(shapes.items())[:6])}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            if name in params:
                params[name].copy_(tensor)
    return missing, unexpected


def load_adapted(path: str | PathLike[str], model: nn.Module, strict: bool = True) -> LoadResult:
    """Load a `save_adapted` file into `model` (which has .backbone and .heads), in place.

    Recorded LoRA the model lacks is injected first (backbone and head sites); recorded settings that
    differ from the model's raise ValueError. With strict=True every file key must be a parameter of the
    model, every parameter of the "head" group and every LoRA parameter of every site must be in the file
    (base parameters of head sites, like the backbone's, load when present), and the backbone's base hash
    must match the recorded one; violations raise ValueError naming the keys. Shapes must always match.
    """
    tensors, metadata = _read(path)
    _prepare_backbone(model.backbone, metadata, path, strict)
    _prepare_heads(model, metadata, path)
    groups = parameter_groups(model)
    expected = set().union(*(names for g, names in groups.items() if g == "head" or g.startswith("lora.")))
    missing, unexpected = _copy_in(model, tensors, expected, strict, path)
    return LoadResult(missing, unexpected, metadata)


def save_lora(
    path: str | PathLike[str], backbone: nn.Module, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write only the LoRA parameters of `backbone` (names relative to the backbone) and their settings."""
    names = lora_parameter_names(backbone)
    if not names:
        raise RuntimeError("the backbone has no LoRA adapters to save; call add_lora first")
    metadata = dict(metadata or {})
    tensors = adapted_state_dict(backbone, names)
    return _write(path, tensors, {**metadata, **_backbone_metadata(backbone)})


def load_lora(path: str | PathLike[str], backbone: nn.Module) -> nn.Module:
    """Load a `save_lora` file into `backbone`, injecting the recorded adapters if it has none; strict.

    Returns `backbone`.
    """
    tensors, metadata = _read(path)
    if _LORA_KEY not in metadata:
        raise ValueError(f"{path} records no LoRA settings; it was not written by save_lora")
    _prepare_backbone(backbone, metadata, path, strict=True)
    _copy_in(backbone, tensors, lora_parameter_names(backbone), strict=True, path=path)
    return backbone
