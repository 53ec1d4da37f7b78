"""The model bundle: what a checkpoint and a registered model version hold, and how to rebuild the model.

A bundle is a directory::

    weights.safetensors   adapted parameters only: LoRA + heads (+ blocks an unfreeze stage trained)
    config.yaml           the resolved job config that built the model
    labels.json           the task's label maps
    backbone.json         backbone name, weights_sha256 of the base weights, img size, weight source

The base backbone weights are *not* in the bundle: they are rebuilt from ``config.yaml`` (hub, local file,
or seeded random init) and checked against ``weights_sha256`` so a bundle never silently loads onto the
wrong base model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

from prism.config import JobConfig, dump_config

if TYPE_CHECKING:
    from torch import nn

    from prism.tasks.base import Task

__all__ = ["BUNDLE_FILES", "WEIGHTS_FILE", "load_bundle", "read_bundle_config", "write_bundle_meta"]

WEIGHTS_FILE = "weights.safetensors"
BUNDLE_FILES = (WEIGHTS_FILE, "config.yaml", "labels.json", "backbone.json")


def write_bundle_meta(path: Path, cfg: JobConfig, task: Task, model: nn.Module) -> None:
    """Write ``config.yaml``, ``labels.json`` and ``backbone.json`` into ``path`` (weights are separate)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(dump_config(cfg))
    (path / "labels.json").write_text(json.dumps(task.label_maps(), indent=2))
    bb = model.backbone
    (path / "backbone.json").write_text(json.dumps({
        "name": bb.name, "family": bb.family, "weights_sha256": bb.weights_sha256,
        "img_size": bb.img_size, "patch_size": bb.patch_size, "embed_dim": bb.embed_dim,
        "pretrained": cfg.backbone.pretrained,
        "weights": None if cfg.backbone.weights is None else str(cfg.backbone.weights),
        "lora": None if cfg.lora is None else cfg.lora.model_dump(mode="json"),
    }, indent=2))


def read_bundle_config(path: Path) -> JobConfig:
    """The :class:`JobConfig` stored in a bundle."""
    cfg_file = Path(path) / "config.yaml"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path} is not a Prism model bundle: no config.yaml (expected {BUNDLE_FILES})")
    return JobConfig.model_validate(yaml.safe_load(cfg_file.read_text()))


def load_bundle(path: Path, device: str | torch.device = "cpu", merge: bool = False
                ) -> tuple[JobConfig, Task, nn.Module]:
    """Rebuild ``(config, task, model)`` from a bundle, in eval mode on ``device``.

    ``merge=True`` folds the LoRA adapters into the base weights (:func:`prism.adapters.merge_lora`): the
    model predicts the same up to float rounding without peft's extra low-rank matmuls in every adapted
    layer (what a predictor wants; resuming training or exporting needs the adapters, so not the default).

    Raises ``ValueError`` when the rebuilt base weights differ from the ones the bundle was trained on.
    """
    from prism.adapters import load_adapted, merge_lora
    from prism.tasks import build_task

    path = Path(path)
    cfg = read_bundle_config(path)
    meta = json.loads((path / "backbone.json").read_text())
    task = build_task(cfg)
    model = task.build_model()
    got = model.backbone.weights_sha256
    if meta.get("weights_sha256") and got != meta["weights_sha256"]:
        raise ValueError(
            f"base weights of backbone '{meta['name']}' differ from the ones this model was trained on "
            f"(sha256 {got[:12]}… vs {meta['weights_sha256'][:12]}…). Load the same weights "
            f"(backbone.weights={meta.get('weights')}, pretrained={meta.get('pretrained')})."
        )
    load_adapted(path / WEIGHTS_FILE, model, strict=True)
    if merge:
        merge_lora(model)
    return cfg, task, model.to(device).eval()
