"""Export a registered model as plain weights: LoRA merged into the backbone, no peft needed to load.

Writes ``backbone.safetensors`` (the backbone's inner model in its library's key format: timm's for
DINO/DINOv2, open_clip's visual tower for CLIP — loadable with ``weights=`` or by that library), ``heads.safetensors``,
and the bundle's ``config.yaml`` / ``labels.json`` (+ the task's ``artifacts/``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

__all__ = ["export_merged"]


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}


def export_merged(source: str, out_dir: Path, check_atol: float = 1e-4) -> Path:
    """Merge the LoRA of ``source`` (``models:/…`` or a bundle folder) and write it to ``out_dir``.

    The merged model's outputs are checked against the unmerged model on a random batch; a difference
    above ``check_atol`` raises ``RuntimeError`` (nothing is written then).
    """
    from prism.adapters import merge_lora
    from prism.inference.predictor import load_predictor

    pred = load_predictor(source, device="cpu", merge=False)
    model = pred.model
    s = pred.img_size
    x = {"image": torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(0))}
    with torch.no_grad():
        before = model(x)
        merge_lora(model)
        after = model(x)
    worst = max(float((before[k] - after[k]).abs().max()) for k in before)
    if worst > check_atol:
        raise RuntimeError(f"merged model differs from the adapted one by {worst:.2e} (> {check_atol})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(_contiguous(model.backbone.model.state_dict()), str(out_dir / "backbone.safetensors"),
              metadata={"backbone": model.backbone.name, "merged_lora": "true"})
    save_file(_contiguous(model.heads.state_dict()), str(out_dir / "heads.safetensors"))
    bundle = Path(pred.source) if Path(pred.source).is_dir() else None
    from prism.tracking import resolve_model_uri

    bundle = bundle or resolve_model_uri(source)
    for name in ("config.yaml", "labels.json"):
        shutil.copy2(bundle / name, out_dir / name)
    if (bundle / "artifacts").is_dir():  # the task's extra files (text embeddings, a PCA basis, …)
        shutil.copytree(bundle / "artifacts", out_dir / "artifacts", dirs_exist_ok=True)
    return out_dir
