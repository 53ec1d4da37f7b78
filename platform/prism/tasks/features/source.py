"""``task.lora_from``: extract the patch features of a registered model's adapted backbone.

The source bundle's backbone tensors (its LoRA of the backbone site, and any base weights an unfreeze stage
trained — every ``backbone.*`` entry of its ``weights.safetensors``) are loaded into this job's model,
built with the source's backbone weights and LoRA settings at this job's ``img_size``. The features
bundle keeps those tensors as its own adapted weights, so loading it rebuilds the same backbone; the
extraction actors merge the LoRA into the weights for speed (same outputs up to float rounding).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torch import nn

    from prism.config import JobConfig

__all__ = ["adopt_source_backbone", "load_backbone_tensors", "tensors_from_bytes", "tensors_to_bytes"]


def adopt_source_backbone(cfg: JobConfig) -> tuple[JobConfig, dict[str, torch.Tensor]]:
    """``cfg`` with the source model's backbone weights source and LoRA settings (head sites dropped), and
    the source's ``backbone.*`` tensors; ``(cfg, {})`` when ``task.lora_from`` is unset."""
    if cfg.task.lora_from is None:
        return cfg, {}
    from safetensors.torch import load_file

    from prism.inference.bundle import WEIGHTS_FILE, bundle_files, read_bundle_config
    from prism.tracking import resolve_model_uri

    path = Path(resolve_model_uri(str(cfg.task.lora_from)))
    bundle_files(path)  # its hashes
    src = read_bundle_config(path)
    if src.backbone.name != cfg.backbone.name:
        raise ValueError(f"task.lora_from: {cfg.task.lora_from} adapts backbone '{src.backbone.name}', this job "
                         f"names '{cfg.backbone.name}'; set backbone.name={src.backbone.name}")
    tensors = {k: v for k, v in load_file(str(path / WEIGHTS_FILE)).items() if k.startswith("backbone.")}
    lora = None
    if src.lora is not None and src.lora.backbone:
        lora = src.lora.model_copy(update={"sites": {}})
    backbone = src.backbone.model_copy(update={"img_size": cfg.backbone.img_size})
    return cfg.model_copy(update={"backbone": backbone, "lora": lora}), tensors


def load_backbone_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``tensors`` (``backbone.*`` names) into ``model``; every one must be a parameter of the same shape."""
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise ValueError(f"task.lora_from: the source model has backbone tensors this model lacks: {unknown[:5]}")
    shapes = {k: (tuple(v.shape), tuple(params[k].shape)) for k, v in tensors.items() if v.shape != params[k].shape}
    if shapes:
        raise ValueError(f"task.lora_from: shapes differ (source, this job): {dict(list(shapes.items())[:3])}; "
                         "the source trained tensors that depend on the image size: use its backbone.img_size")
    with torch.no_grad():
        for k, v in tensors.items():
            params[k].copy_(v)


def tensors_to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def tensors_from_bytes(data: bytes | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return {} if not data else load(data)
