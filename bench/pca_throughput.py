"""PCA reduction: Prism's exact streaming statistics vs scikit-learn's IncrementalPCA on the same features.

Simulated patch features (C = 768, a decaying spectrum, offset from the origin as real tokens are) arrive in
blocks of 64 images × 37² patches (87,616 rows, DINOv2 at 518 px), float32 as a backbone gives them:

* **Prism**: ``PatchStats.add`` per block (float64 centring + ``Xᵀ X``, Chan merge), then one ``eigh``;
* **reference**: ``sklearn.decomposition.IncrementalPCA(n_components=16).partial_fit`` per block (what the
  research scripts used), on the same blocks.

Both get the same blocks, timed per block without the generation of the block. Agreement: |cos| of the
first 10 components between the two, and between Prism's statistics streamed over two blocks and
scikit-learn's exact ``PCA`` of those two blocks at once. The projection: Prism's time for the seed's 10.5 M × 768 patches (measured on all of
them in a full run, extrapolated from the blocks timed in a quick one) against the seed's own estimate of
30–60 min on an A100 (the 30 min end).

    python bench/pca_throughput.py           # IncrementalPCA on 6 blocks; Prism over all 10.5 M rows
    python bench/pca_throughput.py --quick   # 3 blocks each, 10.5 M extrapolated
"""

from __future__ import annotations

import time

import numpy as np
import torch

from _common import BenchResult, Row, bench_parser, write_result
from prism.tasks.features.stats import PatchStats

C = 768
BLOCK = 64 * 37 * 37  # rows per block: 64 images of 37 x 37 patches
SEED_ROWS = 10_500_000
SEED_CLAIM_S = 30 * 60  # the seed's estimate: 30-60 min on an A100
K = 16
SPEEDUP_TARGET = 10.0


class Features:
    """Blocks of (BLOCK, C) float32 features with a fixed decaying spectrum, from one seeded stream."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.basis = torch.from_numpy(np.linalg.qr(rng.normal(size=(C, C)))[0]).float()
        self.scales = torch.from_numpy(4.0 * 0.97 ** np.arange(C)).float()
        self.offset = torch.from_numpy(rng.normal(size=C) * 3).float()
        self.gen = torch.Generator().manual_seed(seed)

    def block(self, n: int = BLOCK) -> torch.Tensor:
        z = torch.randn(n, C, generator=self.gen) * self.scales
        return z @ self.basis.T + self.offset


def cosines(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    return float(np.abs((a[:k] * b[:k]).sum(1)).min())


def main() -> None:
    from sklearn.decomposition import PCA, IncrementalPCA

    args = bench_parser(__doc__).parse_args()
    torch.set_num_threads(torch.get_num_threads())
    ipca_blocks = 3 if args.quick else 6
    feats = Features()
    blocks = [feats.block() for _ in range(ipca_blocks)]

    prism_s, ref_s = [], []
    stats = PatchStats(C)
    ipca = IncrementalPCA(n_components=K)
    for b in blocks:  # alternate, so both see the machine in the same state
        t0 = time.perf_counter()
        stats.add(b)
        prism_s.append(time.perf_counter() - t0)
        x = b.numpy()
        t0 = time.perf_counter()
        ipca.partial_fit(x)
        ref_s.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    basis = stats.pca(K)
    solve_s = time.perf_counter() - t0
    prism_total, ref_total = sum(prism_s) + solve_s, sum(ref_s)
    rows_done = ipca_blocks * BLOCK
    cos_ipca = cosines(basis.components.numpy(), ipca.components_)
    sub = np.concatenate([b.numpy() for b in blocks[:2]]).astype(np.float64)
    exact = PCA(n_components=K, svd_solver="full").fit(sub)
    streamed = PatchStats(C).add(blocks[0]).add(blocks[1])  # the streaming path, block by block
    cos_exact = cosines(streamed.pca(K).components.numpy(), exact.components_)

    rows = [Row(f"reduce {rows_done:,} x {C} (incl. eigh)", "s", prism_total, ref_total,
                reference_label="sklearn IncrementalPCA", target=SPEEDUP_TARGET)]
    if args.quick:
        seed_s = (sum(prism_s) / rows_done) * SEED_ROWS + solve_s
        how = f"extrapolated from {ipca_blocks} blocks"
    else:  # every one of the 10.5 M rows, generation excluded from the timing
        whole, seed_s, n = PatchStats(C), 0.0, 0
        while n < SEED_ROWS:
            b = feats.block(min(BLOCK, SEED_ROWS - n))
            t0 = time.perf_counter()
            whole.add(b)
            seed_s += time.perf_counter() - t0
            n += len(b)
        t0 = time.perf_counter()
        whole.pca(K)
        seed_s += time.perf_counter() - t0
        how = f"measured on all {SEED_ROWS:,} rows"
    rows.append(Row(f"10.5 M x {C} patches ({how})", "s", seed_s, SEED_CLAIM_S,
                    reference_label="seed's estimate (30 min, A100)", target=1.0))
    setup = (f"float32 blocks of {BLOCK:,} x {C}, {torch.get_num_threads()} torch threads; IncrementalPCA "
             f"n_components={K}")
    notes = [f"|cos| of the first 10 components, Prism vs IncrementalPCA: {cos_ipca:.6f}; Prism vs exact PCA on "
             f"{len(sub):,} rows: {cos_exact:.8f}"]
    result = BenchResult(name="pca_throughput", title="PCA reduction: streaming statistics vs IncrementalPCA",
                         rows=rows, quick=args.quick, setup=setup, notes=notes,
                         details={"prism_block_s": prism_s, "ipca_block_s": ref_s, "solve_s": solve_s,
                                  "cos_ipca": cos_ipca, "cos_exact": cos_exact, "rows_per_block": BLOCK})
    write_result(result)
    for note in notes:
        print(f"  {note}")


if __name__ == "__main__":
    main()
