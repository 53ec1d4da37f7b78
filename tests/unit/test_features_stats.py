"""Streaming PCA statistics are exact: scikit-learn's PCA on the same rows, however they are split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from prism.tasks.features.stats import PatchStats


def features(n: int = 3000, c: int = 48, seed: int = 0, offset: float = 50.0) -> np.ndarray:
    """Correlated rows with a decaying spectrum, far from the origin (where naive sums cancel)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(c, c)))[0]
    scales = 3.0 * 0.8 ** np.arange(c)
    return (rng.normal(size=(n, c)) * scales) @ basis.T + offset


def assert_matches_sklearn(stats: PatchStats, x: np.ndarray, k: int = 10) -> None:
    ref = PCA(n_components=k, svd_solver="full").fit(x)
    basis = stats.pca(k)
    cos = np.abs(np.sum(basis.components.numpy() * ref.components_, axis=1))
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(basis.eigenvalues.numpy(), ref.explained_variance_, rtol=1e-6)
    np.testing.assert_allclose(basis.explained_variance_ratio.numpy(), ref.explained_variance_ratio_, rtol=1e-6)
    np.testing.assert_allclose(basis.mean.numpy(), ref.mean_, rtol=1e-9)
    assert basis.count == len(x)


def test_one_block_matches_sklearn_pca():
    x = features()
    assert_matches_sklearn(PatchStats.of(x), x)


def test_blocks_of_any_size_merge_into_the_same_result():
    x = features()
    stats = PatchStats(x.shape[1])
    for lo, hi in [(0, 1), (1, 7), (7, 500), (500, 500), (500, 2999), (2999, 3000)]:
        stats.add(x[lo:hi])
    assert_matches_sklearn(stats, x)
    whole = PatchStats.of(x)
    torch.testing.assert_close(stats.m2, whole.m2, rtol=1e-10, atol=1e-8)


def test_merge_order_and_grouping_do_not_matter():
    x = features(seed=1)
    parts = [PatchStats.of(x[i:i + 250]) for i in range(0, len(x), 250)]
    left = PatchStats.merged(parts)
    right = PatchStats.merged([PatchStats.merged(parts[6:]), PatchStats.merged(parts[:6][::-1])])
    torch.testing.assert_close(left.mean, right.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(left.m2, right.m2, rtol=1e-10, atol=1e-8)
    assert left.n == right.n == len(x)


def test_float32_blocks_are_summed_in_float64():
    """float32 features (as a backbone gives them) still give scikit-learn's float64 answer on them."""
    x = features(offset=300.0).astype(np.float32)
    stats = PatchStats(x.shape[1])
    for i in range(0, len(x), 128):
        stats.add(torch.from_numpy(x[i:i + 128]))
    assert_matches_sklearn(stats, x.astype(np.float64))


def test_components_are_signed_like_sklearn():
    x = features(seed=2)
    ref = PCA(n_components=5, svd_solver="full").fit(x)
    got = PatchStats.of(x).pca(5).components.numpy()
    np.testing.assert_allclose(got, ref.components_, atol=1e-6)


def test_save_load_round_trip(tmp_path):
    x = features(n=200, c=8)
    stats = PatchStats.of(x)
    stats.save(tmp_path / "s.safetensors", {"backbone": "tiny"})
    back, meta = PatchStats.load(tmp_path / "s.safetensors")
    assert meta == {"backbone": "tiny"} and back.n == 200
    torch.testing.assert_close(back.m2, stats.m2)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="width 4 into width 3"):
        PatchStats(3).merge(PatchStats.of(np.zeros((2, 4))))
    with pytest.raises(ValueError, match="at least 2"):
        PatchStats.of(np.zeros((1, 3))).pca()
    with pytest.raises(ValueError, match=r"in \[1, 3\]"):
        PatchStats.of(np.random.default_rng(0).normal(size=(5, 3))).pca(4)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        PatchStats.of(np.zeros((2, 3, 4)))


def test_gram_by_symmetric_blas_equals_the_matmul():
    from prism.tasks.features.stats import gram

    x = torch.from_numpy(features(n=500, c=33, offset=0.0))
    torch.testing.assert_close(gram(x), x.T @ x, rtol=1e-12, atol=1e-9)
    assert torch.equal(gram(x), gram(x).T)
