"""Real photographs that ship with scikit-learn (``china.jpg``, ``flower.jpg``) as a small image collection,
and the reference features of a collection: a bare forward loop over the backbone, no Ray, no Prism data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["bare_patch_features", "photo_collection"]


def photo_collection(folder: Path, crops: int = 6) -> list[Path]:
    """scikit-learn's two sample photographs and ``crops`` square crops of each, as JPEGs in ``folder``
    (in two sub-folders, so a recursive listing is needed); sorted paths."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    paths = []
    for name, photo in zip(("china", "flower"), load_sample_images().images, strict=True):
        sub = folder / name
        sub.mkdir(parents=True, exist_ok=True)
        h, w = photo.shape[:2]
        Image.fromarray(photo).save(sub / "full.jpg", quality=95)
        paths.append(sub / "full.jpg")
        for i in range(crops):
            side = int(rng.integers(h // 3, h))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            Image.fromarray(photo[y:y + side, x:x + side]).save(sub / f"crop{i}.jpg", quality=95)
            paths.append(sub / f"crop{i}.jpg")
    return sorted(paths)


def bare_patch_features(cfg, paths: list[Path], backbone=None) -> np.ndarray:
    """(N·h·w, C) float64 patch tokens of ``paths``: PIL decode, the predictor's resize, the backbone alone
    (``cfg.backbone``'s, or ``backbone`` at ``cfg.backbone.img_size``)."""
    from prism.backbones import create_backbone
    from prism.data.images import resize_rgb

    b = cfg.backbone
    if backbone is None:
        backbone = create_backbone(b.name, weights=b.weights, img_size=b.img_size, seed=b.seed)
    backbone = backbone.eval()
    images = np.stack([resize_rgb(Image.open(p).convert("RGB"), b.img_size) for p in paths])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(backbone.mean)[:, None, None]) / torch.tensor(backbone.std)[:, None, None]
    with torch.no_grad():
        patches = backbone(x)["patches"]
    return patches.reshape(-1, patches.shape[-1]).double().numpy()
