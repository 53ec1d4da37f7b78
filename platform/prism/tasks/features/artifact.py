"""The PCA artifact of a features bundle: ``pca.safetensors`` (tensors) + ``pca.json`` (metadata).

``pca.safetensors``::

    mean (C,) · components (K, C) · eigenvalues (K,) · total_variance (1,) float64 · count (1,) int64
    fg_mean · fg_components · fg_eigenvalues · fg_total_variance · fg_count     (with a foreground PCA)

``pca.json``: format, backbone (name, weights sha256, img_size, patch size, grid, embed dim), patches per
image, totals (images, patches, subjects, clips, videos), components kept, foreground settings, created.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from prism.tasks.features.stats import PCABasis

__all__ = ["ARTIFACT_FORMAT", "PCA_FILE", "PCA_META_FILE", "pca_from_bytes", "pca_to_bytes"]

PCA_FILE = "pca.safetensors"
PCA_META_FILE = "pca.json"
ARTIFACT_FORMAT = 1


def _tensors(prefix: str, basis: PCABasis) -> dict[str, torch.Tensor]:
    return {f"{prefix}mean": basis.mean.double(), f"{prefix}components": basis.components.double(),
            f"{prefix}eigenvalues": basis.eigenvalues.double(),
            f"{prefix}total_variance": torch.tensor([basis.total_variance], dtype=torch.float64),
            f"{prefix}count": torch.tensor([basis.count], dtype=torch.int64)}


def _basis(prefix: str, t: dict[str, torch.Tensor]) -> PCABasis:
    return PCABasis(mean=t[f"{prefix}mean"], components=t[f"{prefix}components"],
                    eigenvalues=t[f"{prefix}eigenvalues"], total_variance=float(t[f"{prefix}total_variance"][0]),
                    count=int(t[f"{prefix}count"][0]))


def pca_to_bytes(basis: PCABasis, fg: PCABasis | None, meta: dict[str, Any]) -> dict[str, bytes]:
    """``{pca.safetensors: …, pca.json: …}`` for the bundle's artifacts."""
    from safetensors.torch import save

    tensors = _tensors("", basis) | ({} if fg is None else _tensors("fg_", fg))
    return {PCA_FILE: save({k: v.contiguous() for k, v in tensors.items()}),
            PCA_META_FILE: json.dumps({"format": ARTIFACT_FORMAT, **meta}, indent=2, default=str).encode()}


def pca_from_bytes(files: dict[str, bytes]) -> tuple[PCABasis, PCABasis | None, dict[str, Any]]:
    """The main basis, the foreground basis (or None) and the metadata of :func:`pca_to_bytes` output."""
    from safetensors.torch import load

    if PCA_FILE not in files:
        raise ValueError(f"not a features bundle: no {PCA_FILE} among its artifacts ({sorted(files)})")
    t = load(files[PCA_FILE])
    meta = json.loads(files[PCA_META_FILE]) if PCA_META_FILE in files else {}
    if int(meta.get("format", ARTIFACT_FORMAT)) > ARTIFACT_FORMAT:
        raise ValueError(f"{PCA_FILE} format {meta['format']} is newer than this Prism reads; upgrade Prism")
    return _basis("", t), (_basis("fg_", t) if "fg_mean" in t else None), meta
