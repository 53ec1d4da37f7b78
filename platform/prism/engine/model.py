"""Model assembly, owned by the engine: backbone → LoRA at the backbone site → the task's heads → LoRA at
the heads' sites. Tasks build only their heads (:meth:`prism.tasks.base.Task.build_heads`).

::

    model = build_model(cfg, task)
    outputs = model({"image": x})   # x float (B, 3, S, S), normalised with model.backbone.mean / std
    model.backbone                  # a prism Backbone (LoRA injected by peft when configured)
    model.heads                     # the task's module: forward(features, inputs) -> outputs
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from prism.config import JobConfig
    from prism.tasks.base import Task

__all__ = ["TaskModel", "build_model", "check_plan"]


class TaskModel(nn.Module):
    """``backbone`` + ``heads``; ``forward(inputs)`` runs the backbone on ``inputs["image"]`` (B, 3, S, S)
    (and the intermediate ``layers`` the task reads) and hands its features and ``inputs`` to the heads."""

    def __init__(self, backbone: nn.Module, heads: nn.Module, layers: tuple[int, ...] = ()):
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        self.layers = tuple(layers)

    def forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        image = inputs["image"]
        features = self.backbone(image, layers=self.layers) if self.layers else self.backbone(image)
        return self.heads(features, inputs)


def _site_settings(cfg: JobConfig, task: Task) -> list[tuple[str, str, tuple[str, ...], dict[str, float]]]:
    """``(site, module, targets, {rank, alpha, dropout})`` for each head site in ``lora.sites``."""
    lo = cfg.lora
    if lo is None or not lo.sites:
        return []
    offered = task.lora_sites()
    unknown = sorted(set(lo.sites) - set(offered))
    if unknown:
        raise ValueError(f"lora.sites {unknown}: task '{task.name}' offers LoRA sites "
                         f"{sorted(offered) or 'none (only the backbone)'}")
    out = []
    for name, site in sorted(lo.sites.items()):
        spec = offered[name]
        out.append((name, spec.module, tuple(site.targets or spec.targets),
                    {"rank": site.rank or lo.rank, "alpha": site.alpha or lo.alpha,
                     "dropout": lo.dropout if site.dropout is None else site.dropout}))
    return out


def build_model(cfg: JobConfig, task: Task, *, weights: bool = True) -> TaskModel:
    """The full model of ``cfg``: nothing frozen yet (stages decide, :func:`prism.adapters.apply_stage`).

    The heads are initialised under ``train.seed`` (so reruns and rebuilt bundles start alike); the
    backbone under ``backbone.seed`` or from its weights. ``weights=False`` skips loading weight files
    (for checks on the meta device).
    """
    from prism.adapters import add_head_lora, add_lora
    from prism.backbones import create_backbone

    b = cfg.backbone
    backbone = create_backbone(b.name, pretrained=b.pretrained and weights, weights=b.weights if weights else None,
                               img_size=b.img_size, seed=b.seed)
    lo = cfg.lora
    if lo is not None and lo.backbone:
        add_lora(backbone, rank=lo.rank, alpha=lo.alpha, dropout=lo.dropout, last_k=lo.last_k,
                 targets=tuple(lo.targets))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        heads = task.build_heads(backbone)
    model = TaskModel(backbone, heads, task.backbone_layers)
    for name, module, targets, settings in _site_settings(cfg, task):
        add_head_lora(model, name, module, targets, **settings)
    return model


def check_plan(cfg: JobConfig, task: Task) -> None:
    """Build the model on the meta device (shapes only, no memory) and check every stage against it
    (groups, learning rates, sites, blocks), so a bad plan fails before any data is read: ``ValueError``
    from :func:`prism.adapters.apply_stage`, which lists the model's groups."""
    from prism.adapters import trainable_names_union

    if cfg.stages:
        with torch.device("meta"):
            model = build_model(cfg, task, weights=False)
        trainable_names_union(model, cfg.stages)
