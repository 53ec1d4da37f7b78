"""Paper and pen primitives shared by the synthetic generators.

Coordinates are image units: ``x, y`` in ``[0, 1]``, ``(0, 0)`` top-left. A stroke is a polyline
``points: (N, 2)`` with a per-point width ``widths: (N,)`` in the same units. Strokes are rasterised on a
supersampled 8-bit coverage mask with PIL ``ImageDraw`` (a chain of discs, so the width can vary along
the stroke), box-filtered down to the output size (anti-aliasing), and composited onto a paper-like
background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4

# Dark pen / pencil colours (RGB 0..255): black, blue ballpoint, graphite, blue-black, dark red, green.
_INK_COLOURS = np.array(
    [[22, 22, 28], [28, 45, 125], [62, 62, 68], [20, 30, 62], [120, 28, 30], [24, 70, 40]],
    dtype=np.float32,
)
_INK_WEIGHTS = np.array([0.35, 0.25, 0.15, 0.15, 0.05, 0.05])


@dataclass(frozen=True)
class Pen:
    """Ink colour (RGB 0..255), opacity in ``(0, 1]`` and nominal stroke width (fraction of image size)."""

    colour: tuple[float, float, float]
    opacity: float
    width: float


def sample_pen(rng: np.random.Generator, width: float) -> Pen:
    """A random pen of nominal ``width``; colour and opacity are independent of any label."""
    base = _INK_COLOURS[rng.choice(len(_INK_COLOURS), p=_INK_WEIGHTS)]
    colour = np.clip(base + rng.normal(0.0, 6.0, size=3), 0, 255)
    return Pen(colour=tuple(float(c) for c in colour), opacity=float(rng.uniform(0.82, 1.0)), width=width)


def smooth_noise(rng: np.random.Generator, n: int, amplitude: float, correlation: float = 0.1) -> np.ndarray:
    """Smoothed random walk, shape ``(n,)``, zero mean, standard deviation ``amplitude``.

    ``correlation`` is the Gaussian smoothing width as a fraction of ``n`` (larger = slower drift).
    """
    if n < 2 or amplitude <= 0:
        return np.zeros(n)
    walk = np.cumsum(rng.normal(size=n))
    sigma = max(correlation * n, 1.0)
    half = int(3 * sigma)
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    smooth = np.convolve(np.pad(walk, half, mode="edge"), kernel / kernel.sum(), mode="valid")
    smooth -= smooth.mean()
    std = smooth.std()
    return smooth * (amplitude / std) if std > 0 else smooth


def resample(points: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample a polyline ``(N, 2)`` at equal arc-length ``spacing``.

    Returns ``(dense (M, 2), s (N,) arc length of the input vertices, t (M,) arc length of dense)``.
    """
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    m = max(int(np.ceil(s[-1] / spacing)) + 1, 2)
    t = np.linspace(0.0, s[-1], m)
    dense = np.stack([np.interp(t, s, points[:, 0]), np.interp(t, s, points[:, 1])], axis=1)
    return dense, s, t


def hand_polyline(rng: np.random.Generator, vertices: np.ndarray, jitter: float = 0.004) -> np.ndarray:
    """Densify a polyline ``(N, 2)`` and add a smooth sideways tremor of std ``jitter``: ``(M, 2)``."""
    dense, _, _ = resample(np.asarray(vertices, dtype=float), 0.004)
    tangent = np.gradient(dense, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    offset = smooth_noise(rng, len(dense), jitter, correlation=0.03)
    return dense + normal * offset[:, None]


def stroke_widths(rng: np.random.Generator, n: int, width: float, variation: float, taper: float) -> np.ndarray:
    """Per-point widths ``(n,)``: ``width`` with smooth pressure ``variation`` (relative std) and ends
    thinned to ``taper`` x over the first / last 6 % of the stroke."""
    w = width * np.clip(1.0 + smooth_noise(rng, n, variation, correlation=0.08), 0.5, 1.6)
    u = np.linspace(0.0, 1.0, n)
    ramp = np.clip(np.minimum(u, 1.0 - u) / 0.06, 0.0, 1.0)
    return w * (taper + (1.0 - taper) * ramp)


class InkCanvas:
    """Supersampled coverage mask that strokes are drawn on; ``coverage()`` is ``(size, size)`` in [0, 1]."""

    def __init__(self, size: int, supersample: int = SUPERSAMPLE) -> None:
        self.size = size
        self.scale = size * supersample
        self._mask = Image.new("L", (self.scale, self.scale), 0)
        self._draw = ImageDraw.Draw(self._mask)

    def stroke(self, points: np.ndarray, widths: np.ndarray | float) -> None:
        """Draw polyline ``points (N, 2)`` with ``widths`` (scalar or ``(N,)``), image units."""
        pts = np.asarray(points, dtype=float) * self.scale
        w = np.broadcast_to(np.asarray(widths, dtype=float), (len(pts),)) * self.scale
        dense, s, t = resample(pts, max(1.0, float(w.min()) / 4.0))
        radii = np.interp(t, s, w) / 2.0
        for (x, y), r in zip(dense, radii, strict=True):
            self._draw.ellipse((x - r, y - r, x + r, y + r), fill=255)

    def coverage(self) -> np.ndarray:
        """Box-filtered ink coverage, ``(size, size)`` float32 in ``[0, 1]``."""
        small = self._mask.resize((self.size, self.size), Image.Resampling.BOX)
        return np.asarray(small, dtype=np.float32) / 255.0


def paper(rng: np.random.Generator, size: int) -> np.ndarray:
    """Off-white paper, ``(size, size, 3)`` float32 0..255: tint, soft blotches and fine grain."""
    base = rng.uniform(228.0, 250.0) + rng.normal(0.0, 3.0, size=3)
    blotch = Image.fromarray(rng.normal(0.0, 1.0, size=(5, 5)).astype(np.float32))
    blotch = np.asarray(blotch.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    grain = rng.normal(0.0, rng.uniform(1.5, 4.0), size=(size, size, 1))
    img = base[None, None, :] + rng.uniform(2.0, 6.0) * blotch[..., None] + grain
    return np.clip(img, 0.0, 255.0).astype(np.float32)


def compose(background: np.ndarray, coverage: np.ndarray, pen: Pen) -> Image.Image:
    """Lay ``pen`` ink with ``coverage (H, W)`` over ``background (H, W, 3)``: RGB image."""
    alpha = (pen.opacity * coverage)[..., None]
    ink = np.asarray(pen.colour, dtype=np.float32)[None, None, :]
    out = background * (1.0 - alpha) + ink * alpha
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
