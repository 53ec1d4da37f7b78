"""Deformable attention: Prism's one-call vectorised sampling vs a per-point loop, forward + backward.

The reference samples as the research detector did: a Python loop over batch, query, head, level and point,
each point read from its level with ``grid_sample`` on a 1 × 1 grid. Prism's
:func:`~prism.tasks.detection.deformable.ms_deform_attn` samples every head, level and point of the batch
in one ``grid_sample``. Both on the same random inputs (3 levels of 32², 16², 8²; 8 heads of 32 channels;
4 points), float32; the outputs are checked equal before timing.

    python bench/deformable_attention.py           # 2 images x 50 queries
    python bench/deformable_attention.py --quick   # 1 image x 10 queries
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from _common import BenchResult, Row, bench_parser, write_result
from prism.tasks.detection.deformable import ms_deform_attn

SHAPES = [(32, 32), (16, 16), (8, 8)]
HEADS, DIM, POINTS = 8, 32, 4
TARGET = 10.0


def per_point(value, shapes, locations, weights):
    b, _, m, d = value.shape
    _, q, _, levels, points, _ = locations.shape
    maps, start = [], 0
    for h, w in shapes:
        maps.append(value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(b, m, d, h, w))
        start += h * w
    rows = []
    for bi in range(b):
        for qi in range(q):
            heads = []
            for mi in range(m):
                acc = value.new_zeros(d)
                for li in range(levels):
                    for pi in range(points):
                        grid = (locations[bi, qi, mi, li, pi] * 2 - 1).view(1, 1, 1, 2)
                        sample = F.grid_sample(maps[li][bi, mi][None], grid, align_corners=False)
                        acc = acc + weights[bi, qi, mi, li, pi] * sample.view(d)
                heads.append(acc)
            rows.append(torch.cat(heads))
    return torch.stack(rows).view(b, q, m * d)


def timed(fn, inputs, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        args = [t.detach().clone().requires_grad_(True) for t in inputs]
        t0 = time.perf_counter()
        fn(args[0], SHAPES, args[1], args[2]).square().sum().backward()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    args = bench_parser(__doc__).parse_args()
    b, q = (1, 10) if args.quick else (2, 50)
    g = torch.Generator().manual_seed(0)
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn(b, s, HEADS, DIM, generator=g)
    loc = torch.rand(b, q, HEADS, len(SHAPES), POINTS, 2, generator=g)
    wts = torch.rand(b, q, HEADS, len(SHAPES), POINTS, generator=g).softmax(-1)
    torch.testing.assert_close(ms_deform_attn(value, SHAPES, loc, wts), per_point(value, SHAPES, loc, wts),
                               rtol=1e-4, atol=1e-5)
    fast = timed(ms_deform_attn, (value, loc, wts), 5)
    slow = timed(per_point, (value, loc, wts), 1 if not args.quick else 2)
    rows = [Row(f"forward + backward, {b} x {q} queries", "s", fast, slow, reference_label="per-point loop",
                target=TARGET)]
    write_result(BenchResult(name="deformable_attention", title="Deformable attention: vectorised vs per-point loop",
                             rows=rows, quick=args.quick,
                             setup=f"levels {SHAPES}, {HEADS} heads x {DIM}, {POINTS} points, float32, "
                                   f"{torch.get_num_threads()} threads",
                             details={"vectorised_s": fast, "per_point_s": slow}))


if __name__ == "__main__":
    main()
