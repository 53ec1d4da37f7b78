"""Pen marks that are *not* circles, for the ``no_circle`` class of the circles generator.

Each kind returns a list of polylines ``(N, 2)`` in image units (see ``_ink``); they are drawn with the
same pens and widths as the circles, so only the shape tells the classes apart.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from prism.data.synth._ink import hand_polyline

Polylines = list[np.ndarray]

_MARGIN = 0.08


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _place(rng: np.random.Generator, shapes: Polylines, extent: tuple[float, float] = (0.5, 0.85)) -> Polylines:
    """Scale local shapes (unit extent around 0) to a random size, rotate, and move to a random spot
    that keeps every point inside the margins."""
    scale = rng.uniform(*extent)
    rot = _rotation(rng.uniform(0.0, 2.0 * np.pi))
    shapes = [(p * scale) @ rot.T for p in shapes]
    allp = np.concatenate(shapes)
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    span = hi - lo
    room = 1.0 - 2.0 * _MARGIN
    if span.max() > room:  # shrink to fit
        shapes = [p * (room / span.max()) for p in shapes]
        allp = np.concatenate(shapes)
        lo, hi = allp.min(axis=0), allp.max(axis=0)
    # after a shrink-to-fit the room left is 0 up to rounding (high - low can be -1e-17): never below low
    offset = np.array([rng.uniform(_MARGIN - lo[i], max(_MARGIN - lo[i], 1.0 - _MARGIN - hi[i])) for i in range(2)])
    return [p + offset for p in shapes]


def _lines(rng: np.random.Generator, width: float) -> Polylines:
    """Two to four straight strokes, possibly crossing."""
    out = []
    for _ in range(int(rng.integers(2, 5))):
        for _attempt in range(20):
            a, b = rng.uniform(0.1, 0.9, size=(2, 2))
            if np.linalg.norm(a - b) > 0.35:
                break
        out.append(np.stack([a, b]))
    return out


def _stroke(rng: np.random.Generator, width: float) -> Polylines:
    """One long straight or slightly bent stroke (quadratic curve with a small sag)."""
    t = np.linspace(-0.5, 0.5, 40)
    sag = rng.uniform(-0.08, 0.08)
    return _place(rng, [np.stack([t, sag * (1.0 - 4.0 * t**2)], axis=1)], extent=(0.55, 0.9))


def _zigzag(rng: np.random.Generator, width: float) -> Polylines:
    """A zig-zag of 4-8 sharp teeth along a line."""
    k = int(rng.integers(4, 9))
    x = np.linspace(-0.5, 0.5, k)
    y = rng.uniform(0.1, 0.25) * np.where(np.arange(k) % 2 == 0, 1.0, -1.0) * rng.uniform(0.7, 1.0, size=k)
    return _place(rng, [np.stack([x, y], axis=1)], extent=(0.55, 0.9))


def _scribble(rng: np.random.Generator, width: float) -> Polylines:
    """Dense back-and-forth hatching, like shading something in."""
    scale, height = rng.uniform(0.55, 0.8), rng.uniform(0.5, 0.9)
    most = int(height * scale / (1.3 * width))  # keep paper visible between the passes
    lo = max(4, most // 2)
    k = int(rng.integers(lo, max(most, lo) + 1))
    x = 0.5 * np.where(np.arange(k) % 2 == 0, -1.0, 1.0) * rng.uniform(0.75, 1.0, size=k)
    y = np.linspace(-height / 2, height / 2, k) + rng.normal(0.0, 0.01, size=k)
    return _place(rng, [np.stack([x, y], axis=1)], extent=(scale, scale))


def _wave(rng: np.random.Generator, width: float) -> Polylines:
    """An open wavy line with 1.5-3 periods."""
    t = np.linspace(-0.5, 0.5, 120)
    y = rng.uniform(0.06, 0.16) * np.sin(2.0 * np.pi * rng.uniform(1.5, 3.0) * t + rng.uniform(0, 2 * np.pi))
    return _place(rng, [np.stack([t, y], axis=1)], extent=(0.55, 0.9))


def _polygon(rng: np.random.Generator, width: float) -> Polylines:
    """A hand-drawn triangle or quadrilateral with sharp corners."""
    k = int(rng.choice([3, 4]))
    ang = np.arange(k) * 2.0 * np.pi / k + rng.normal(0.0, 0.12, size=k)
    rad = 0.5 * rng.uniform(0.8, 1.0, size=k)
    verts = np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
    closed = np.concatenate([verts, verts[:1]])
    return _place(rng, [closed], extent=(0.6, 0.9))


def _empty(rng: np.random.Generator, width: float) -> Polylines:
    """A blank page."""
    return []


DISTRACTORS: dict[str, Callable[[np.random.Generator, float], Polylines]] = {
    "empty": _empty,
    "lines": _lines,
    "stroke": _stroke,
    "zigzag": _zigzag,
    "scribble": _scribble,
    "wave": _wave,
    "polygon": _polygon,
}
# Blank pages are rare so that "no_circle" is learnt as "marks that are not a circle".
_WEIGHTS = {"empty": 0.08, "lines": 0.17, "stroke": 0.13, "zigzag": 0.16, "scribble": 0.16, "wave": 0.15,
            "polygon": 0.15}


def sample_distractor(rng: np.random.Generator) -> str:
    """Draw a distractor kind by its weight."""
    names = list(DISTRACTORS)
    p = np.array([_WEIGHTS[n] for n in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def distractor_strokes(rng: np.random.Generator, kind: str, width: float) -> Polylines:
    """Polylines for ``kind`` drawn with a pen of ``width``, hand tremor applied; ``[]`` for ``"empty"``."""
    if kind not in DISTRACTORS:
        raise ValueError(f"unknown distractor {kind!r}; valid: {sorted(DISTRACTORS)}")
    return [hand_polyline(rng, p, jitter=rng.uniform(0.002, 0.005)) for p in DISTRACTORS[kind](rng, width)]
