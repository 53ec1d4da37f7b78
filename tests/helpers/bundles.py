"""Model bundles for tests, without training: fake folders for the registry, real tiny ones for inference.

- :func:`make_bundle`: the four bundle files with placeholder contents. Enough for logging, registering
  and resolving (nothing loads the weights); ``tag`` is written into ``weights_sha256`` so versions can be
  told apart after a round trip (:func:`sha_of`).
- :func:`fabricate_bundle`: a loadable bundle of ``jobs/circles.yaml`` on the job's tiny backbone at 64 px whose
  LoRA B and head weights are drawn from ``seed`` (two seeds give visibly different predictions);
  :func:`build_bundle` also returns the model it saved and the names of the saved parameters.
- :func:`classify_bundle`: a loadable, untrained single-label classifier on a tiny backbone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tests.conftest import CIRCLES_JOB

__all__ = ["BUNDLE_FILES", "IMG_SIZE", "PLAN", "Fabricated", "build_bundle", "classify_bundle", "fabricate_bundle",
           "make_bundle", "sha_of"]

BUNDLE_FILES = {"backbone.json", "config.yaml", "labels.json", "weights.safetensors"}
"""What :func:`make_bundle` writes (a version-1 bundle: no manifest)."""
IMG_SIZE = 64
PLAN = "stages=[{kind: probe, epochs: 1, lr: {head: 1e-3}}, {kind: lora, epochs: 1, lr: {head: 1e-3, lora: 1e-3}}]"


def make_bundle(root: Path, tag: str) -> Path:
    """A fake bundle ``root/bundle-<tag>``: the bundle files, placeholder contents, ``weights_sha256 = sha-<tag>``."""
    bundle = root / f"bundle-{tag}"
    bundle.mkdir(parents=True)
    (bundle / "backbone.json").write_text(
        json.dumps({"name": "dinov2_tiny", "weights_sha256": f"sha-{tag}", "embed_dim": 48})
    )
    (bundle / "config.yaml").write_text("task: classify\n")
    (bundle / "labels.json").write_text(json.dumps(["cat", "dog"]))
    (bundle / "weights.safetensors").write_bytes(b"\x00" * 64)
    return bundle


def sha_of(bundle: Path) -> str:
    """The ``weights_sha256`` a bundle's ``backbone.json`` records."""
    return json.loads((Path(bundle) / "backbone.json").read_text())["weights_sha256"]


@dataclass
class Fabricated:
    path: Path
    model: nn.Module  # in eval mode, as saved
    names: list[str]  # sorted names of the parameters in the weights file


def build_bundle(path: Path, seed: int = 0, std: float = 0.5, plan: str = PLAN) -> Fabricated:
    """Write a bundle of the circles job (tiny backbone, 64 px, stage ``plan``) into ``path``, as training
    would; LoRA B and the heads are drawn from N(0, ``std``) with ``seed``, so the adapters change predictions."""
    from prism.adapters import bundle_names
    from prism.config import load_config
    from prism.engine.model import build_model
    from prism.inference.bundle import write_bundle
    from prism.tasks import build_task

    cfg = load_config(CIRCLES_JOB, [plan, f"backbone.img_size={IMG_SIZE}"])
    task = build_task(cfg)
    model = build_model(task.cfg, task)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or name.startswith("heads."):
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    names = sorted(bundle_names(model, cfg.stages))
    write_bundle(path, cfg, task, model, names)
    return Fabricated(path, model.eval(), names)


def fabricate_bundle(path: Path, seed: int) -> Path:
    """A loadable bundle in ``path`` (:func:`build_bundle` with LoRA B and heads from ``seed``)."""
    return build_bundle(path, seed).path


def classify_bundle(path: Path, backbone: str = "dinov2_tiny", img_size: int = 28,
                    classes: tuple[str, ...] = ("cat", "dog", "bird")) -> Path:
    """A loadable, untrained ``classify`` bundle at ``path`` (seed 0): ``backbone`` at ``img_size``, an MLP
    head over ``classes``, LoRA rank 2 on the last block."""
    from prism.config import JobConfig
    from prism.engine.model import build_model
    from prism.inference.bundle import write_bundle
    from prism.tasks.classify.task import ClassifyTask

    cfg = JobConfig.model_validate({
        "task": {"name": "classify", "classes": list(classes), "head": {"hidden": [16]}},
        "backbone": {"name": backbone, "img_size": img_size}, "lora": {"rank": 2, "last_k": 1},
        "stages": [{"kind": "lora", "epochs": 1, "lr": {"head": 1e-3, "lora": 1e-3}}]})
    task = ClassifyTask(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, task)
    names = [n for n, _ in model.named_parameters() if n.startswith("heads.") or "lora_" in n]
    return write_bundle(path, cfg, task, model, names)

