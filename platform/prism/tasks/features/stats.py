"""Exact streaming PCA: sufficient statistics of patch features, merged across blocks, workers and runs.

Each block of N feature rows X (N, C) reduces to ``(n, mean (C,), m2 (C, C))`` in float64, where
``m2 = Σ (x - mean)(x - mean)ᵀ`` over the block's rows. Two such summaries merge exactly (Chan, Golub &
LeVeque's pairwise update)::

    δ = mean_b - mean_a;  n = n_a + n_b
    mean = mean_a + δ · n_b / n;  m2 = m2_a + m2_b + δ δᵀ · n_a n_b / n

so the order of blocks, their sizes and how they were split over actors or runs do not change the result
beyond float64 rounding, and memory is O(C²) however many rows go in. Centring each block on its own mean
before the outer product keeps the float64 sums from cancelling when features sit far from the origin.

:meth:`PatchStats.pca` solves the covariance ``m2 / (n - 1)`` (the unbiased estimate, as scikit-learn's
``PCA.explained_variance_``) with ``torch.linalg.eigh``: components sorted by decreasing variance, each
signed so that its largest-magnitude entry is positive (scikit-learn's ``svd_flip`` convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["PCABasis", "PatchStats", "gram"]


@dataclass
class PCABasis:
    """A PCA solution: ``mean`` (C,), ``components`` (K, C) orthonormal rows, ``eigenvalues`` (K,) (the
    variance along each, decreasing), ``total_variance`` (the trace of the covariance) and the row count."""

    mean: torch.Tensor
    components: torch.Tensor
    eigenvalues: torch.Tensor
    total_variance: float
    count: int

    @property
    def explained_variance_ratio(self) -> torch.Tensor:
        """(K,) the fraction of the total variance each component explains."""
        return self.eigenvalues / self.total_variance

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Features (..., C) → component values (..., K): ``(x - mean) @ components.T``."""
        mean = self.mean.to(x.device, x.dtype)
        return (x - mean) @ self.components.to(x.device, x.dtype).T


def gram(x: torch.Tensor) -> torch.Tensor:
    """``xᵀ x`` (C, C) of float64 rows ``x`` (N, C). On the CPU by BLAS ``dsyrk``, which computes one
    triangle of the symmetric product (half the multiply-adds of a matmul), mirrored; elsewhere a matmul."""
    if x.device.type != "cpu":
        return x.T @ x
    from scipy.linalg.blas import dsyrk

    upper = torch.from_numpy(dsyrk(1.0, x.numpy().T, trans=0, lower=0))  # x.T is Fortran-ordered: no copy
    return upper.triu() + upper.triu(1).T


class PatchStats:
    """Running ``(n, mean, m2)`` of feature rows of width ``dim``, all float64 on the CPU."""

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.n = 0
        self.mean = torch.zeros(self.dim, dtype=torch.float64)
        self.m2 = torch.zeros(self.dim, self.dim, dtype=torch.float64)

    # -- building -----------------------------------------------------------------------------------
    @classmethod
    def of(cls, x: torch.Tensor | np.ndarray) -> PatchStats:
        """The statistics of one block ``x`` (N, C) (any float dtype, any device; summed in float64 there)."""
        x = torch.as_tensor(x)
        if x.ndim != 2:
            raise ValueError(f"features must be (N, C), got shape {tuple(x.shape)}")
        out = cls(x.shape[1])
        if x.shape[0] == 0:
            return out
        centred = x.to(torch.float64, copy=True)  # one float64 buffer, centred in place
        mean = centred.mean(0)
        centred.sub_(mean)
        out.n = int(x.shape[0])
        out.mean = mean.cpu()
        out.m2 = gram(centred).cpu()
        return out

    def add(self, x: torch.Tensor | np.ndarray) -> PatchStats:
        """Add the rows of ``x`` (N, C); returns self."""
        return self.merge(PatchStats.of(x))

    def merge(self, other: PatchStats) -> PatchStats:
        """Add ``other``'s rows (exactly, by the pairwise update); returns self."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of width {other.dim} into width {self.dim}")
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean.clone(), other.m2.clone()
            return self
        n = self.n + other.n
        delta = other.mean - self.mean
        self.m2 = self.m2 + other.m2 + torch.outer(delta, delta) * (self.n * other.n / n)
        self.mean = self.mean + delta * (other.n / n)
        self.n = n
        return self

    @classmethod
    def merged(cls, parts: list[PatchStats]) -> PatchStats:
        """One summary of every part (they must share a width); an empty list is an error."""
        if not parts:
            raise ValueError("no statistics to merge")
        out = cls(parts[0].dim)
        for p in parts:
            out.merge(p)
        return out

    # -- solving ------------------------------------------------------------------------------------
    def covariance(self) -> torch.Tensor:
        """(C, C) the unbiased covariance ``m2 / (n - 1)``."""
        if self.n < 2:
            raise ValueError(f"PCA needs at least 2 feature rows, got {self.n}")
        return self.m2 / (self.n - 1)

    def pca(self, k: int | None = None) -> PCABasis:
        """The first ``k`` principal components (all C when None)."""
        cov = self.covariance()
        k = self.dim if k is None else int(k)
        if not 1 <= k <= self.dim:
            raise ValueError(f"components must be in [1, {self.dim}], got {k}")
        values, vectors = torch.linalg.eigh(cov)  # ascending
        values, vectors = values.flip(0)[:k], vectors.flip(1)[:, :k].T.contiguous()  # (k,), (k, C)
        biggest = vectors.abs().argmax(1)
        signs = torch.sign(vectors[torch.arange(k), biggest])
        vectors = vectors * signs[:, None]
        return PCABasis(mean=self.mean.clone(), components=vectors, eigenvalues=values.clamp_min(0.0),
                        total_variance=float(torch.trace(cov)), count=self.n)

    # -- files ----------------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """The statistics as named tensors (what :meth:`save` writes)."""
        return {"count": torch.tensor([self.n], dtype=torch.int64), "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> PatchStats:
        missing = sorted({"count", "mean", "m2"} - set(tensors))
        if missing:
            raise ValueError(f"not PCA statistics: missing {missing}")
        mean = tensors["mean"].to(torch.float64)
        out = cls(mean.shape[0])
        out.n, out.mean, out.m2 = int(tensors["count"][0]), mean, tensors["m2"].to(torch.float64)
        if out.m2.shape != (out.dim, out.dim):
            raise ValueError(f"m2 has shape {tuple(out.m2.shape)}, expected ({out.dim}, {out.dim})")
        return out

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
        """Write the statistics (+ string ``metadata``) to a safetensors file, atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(self.tensors(), str(tmp), metadata=dict(metadata or {}))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> tuple[PatchStats, dict[str, str]]:
        """The statistics in ``path`` and the metadata saved with them."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            metadata = dict(f.metadata() or {})
        return cls.from_tensors(tensors), metadata
