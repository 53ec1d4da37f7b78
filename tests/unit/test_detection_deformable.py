"""Deformable attention: the one-call vectorised sampling equals a naive per-point bilinear loop, and a
box at a known place pulls the sampled features from there."""

from __future__ import annotations

import math

import pytest
import torch

from prism.tasks.detection.deformable import MSDeformAttn, ms_deform_attn

SHAPES = [(6, 8), (3, 4), (2, 2)]


def bilinear(grid: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """``grid`` (H, W, D) at pixel (x, y), zeros outside (align_corners=False semantics)."""
    h, w, d = grid.shape
    x0, y0 = math.floor(x), math.floor(y)
    out = torch.zeros(d, dtype=grid.dtype)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += grid[yy, xx] * (wx * wy)
    return out


def naive(value, shapes, locations, weights):
    b, _, m, d = value.shape
    _, q, _, levels, points, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(b, q, m, d, dtype=value.dtype)
    for bi in range(b):
        for qi in range(q):
            for mi in range(m):
                for li, (h, w) in enumerate(shapes):
                    grid = value[bi, starts[li]:starts[li + 1], mi].reshape(h, w, d)
                    for pi in range(points):
                        x, y = locations[bi, qi, mi, li, pi].tolist()
                        out[bi, qi, mi] += weights[bi, qi, mi, li, pi] * bilinear(grid, x * w - 0.5, y * h - 0.5)
    return out.reshape(b, q, m * d)


def random_inputs(seed=0, b=2, q=5, m=3, d=4, points=3):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn(b, s, m, d, generator=g, dtype=torch.float64)
    locations = torch.rand(b, q, m, len(SHAPES), points, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(b, q, m, len(SHAPES), points, generator=g, dtype=torch.float64)
    return value, locations, weights / weights.sum(dim=(-1, -2), keepdim=True)


def test_vectorised_equals_a_naive_loop_including_points_outside():
    value, locations, weights = random_inputs()
    torch.testing.assert_close(ms_deform_attn(value, SHAPES, locations, weights),
                               naive(value, SHAPES, locations, weights), rtol=1e-10, atol=1e-10)


def test_gradients_equal_the_naive_loop():
    value, locations, weights = random_inputs(seed=1, b=1, q=2, m=2, d=2, points=2)
    grads = []
    for fn in (ms_deform_attn, naive):
        v, lo, w = (t.clone().requires_grad_(True) for t in (value, locations, weights))
        fn(v, SHAPES, lo, w).square().sum().backward()
        grads.append((v.grad, w.grad))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_a_box_at_a_known_place_samples_the_features_there():
    """Memory with one 'hot' cell; a query whose reference point sits on it reads its feature, one far away
    reads nothing of it."""
    torch.manual_seed(0)
    attn = MSDeformAttn(dim=8, levels=1, heads=2, points=1).double()
    with torch.no_grad():  # sample exactly at the reference point, copy values through
        attn.sampling_offsets.bias.zero_()
        attn.value_proj.weight.copy_(torch.eye(8))
        attn.output_proj.weight.copy_(torch.eye(8))
    h, w = 8, 8
    memory = torch.zeros(1, h * w, 8, dtype=torch.float64)
    memory[0, 5 * w + 2] = 1.0  # the cell at row 5, column 2
    ref = torch.tensor([[[[(2 + 0.5) / w, (5 + 0.5) / h]], [[(6 + 0.5) / w, (1 + 0.5) / h]]]], dtype=torch.float64)
    out = attn(torch.zeros(1, 2, 8, dtype=torch.float64), ref, memory, [(h, w)])
    torch.testing.assert_close(out[0, 0], torch.ones(8, dtype=torch.float64))
    torch.testing.assert_close(out[0, 1], torch.zeros(8, dtype=torch.float64))


def test_shapes_must_describe_the_memory():
    value, locations, weights = random_inputs()
    with pytest.raises(ValueError, match="do not describe"):
        ms_deform_attn(value, [(6, 8), (3, 4)], locations[:, :, :, :2], weights[:, :, :, :2])
