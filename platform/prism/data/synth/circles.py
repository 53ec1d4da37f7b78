"""Synthetic hand-drawn circles for the multi-head ``circles`` task.

Heads (``"na"`` where a head is not defined):
    presence:    circle_clear | circle_resembles | no_circle
    closure:     closed | almost_closed      (only when presence != no_circle)
    circularity: circular | elliptical      (only when presence != no_circle)

A sample is a ``CircleSpec`` (labels + geometry, drawn from an rng) rendered by ``render_circle_spec``
into an RGB image ``(size, size)``. Labels are drawn uniformly per head, so presence is ~1/3 each and
closure / circularity are ~1/2 each among circles. Every image depends only on ``(seed, index)``
(``circle_sample``), so a data set can be generated in pieces. ``generate_circles`` writes
``images/NNNNN.png`` and ``labels.csv`` (``image,presence,closure,circularity``; closure / circularity
empty for no_circle).
"""

from __future__ import annotations

import csv
import pathlib
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from prism.data.synth._distractors import distractor_strokes, sample_distractor
from prism.data.synth._ink import InkCanvas, compose, paper, sample_pen, smooth_noise, stroke_widths

__all__ = [
    "CLOSURE",
    "CIRCULARITY",
    "HEADS",
    "NA",
    "PRESENCE",
    "CircleSpec",
    "circle_sample",
    "draw_circle_sample",
    "generate_circles",
    "render_circle_spec",
    "sample_circle_spec",
]

PRESENCE = ("circle_clear", "circle_resembles", "no_circle")
CLOSURE = ("closed", "almost_closed")
CIRCULARITY = ("circular", "elliptical")
HEADS: dict[str, tuple[str, ...]] = {"presence": PRESENCE, "closure": CLOSURE, "circularity": CIRCULARITY}
NA = "na"
CSV_COLUMNS = ("image", "presence", "closure", "circularity")


@dataclass(frozen=True)
class CircleSpec:
    """Labels and geometry of one sample; lengths are fractions of the image size.

    ``radius`` is the semi-major axis, ``axis_ratio`` minor / major, ``rotation`` and ``start`` (where the
    pen sets down) are radians, ``gap`` / ``overshoot`` are arc lengths missing / drawn past one turn.
    For ``no_circle`` the geometry is zero and ``distractor`` names what is drawn instead.
    """

    presence: str
    closure: str
    circularity: str
    width: float
    cx: float = 0.0
    cy: float = 0.0
    radius: float = 0.0
    axis_ratio: float = 1.0
    rotation: float = 0.0
    start: float = 0.0
    gap: float = 0.0
    overshoot: float = 0.0
    distractor: str | None = None

    def labels(self) -> dict[str, str]:
        """``{"presence", "closure", "circularity"}`` -> class name (``"na"`` where undefined)."""
        return {"presence": self.presence, "closure": self.closure, "circularity": self.circularity}


def _pick(rng: np.random.Generator, head: str, value: str | None) -> str:
    choices = HEADS[head]
    if value is None:
        return choices[int(rng.integers(len(choices)))]
    if value not in choices:
        raise ValueError(f"{head}={value!r} is not a class; valid: {list(choices)}")
    return value


def _perimeter(a: float, b: float) -> float:
    """Ramanujan's approximation of an ellipse perimeter."""
    return float(np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b))))


def sample_circle_spec(
    rng: np.random.Generator,
    presence: str | None = None,
    closure: str | None = None,
    circularity: str | None = None,
) -> CircleSpec:
    """Draw labels (uniform per head unless given) and a geometry consistent with them."""
    presence = _pick(rng, "presence", presence)
    width = float(rng.uniform(0.035, 0.06))
    if presence == "no_circle":
        if closure not in (None, NA) or circularity not in (None, NA):
            raise ValueError("closure / circularity are only defined for circles; pass None or 'na'")
        return CircleSpec(presence, NA, NA, width, distractor=sample_distractor(rng))
    closure = _pick(rng, "closure", closure)
    circularity = _pick(rng, "circularity", circularity)
    rough = presence == "circle_resembles"
    radius = float(rng.uniform(0.24, 0.38))
    ratio = float(rng.uniform(0.93, 1.0) if circularity == "circular" else rng.uniform(0.45, 0.72))
    rotation = float(rng.uniform(0.0, np.pi))
    perimeter = _perimeter(radius, radius * ratio)
    gap = overshoot = 0.0
    if closure == "almost_closed":  # ~27-60 degrees of arc; >= 2 (rough: 2.5) stroke widths stay visible
        least = 3.5 * width if rough else 3.0 * width
        gap = float(rng.uniform(max(0.075 * perimeter, least), max(0.165 * perimeter, least + width)))
    elif rough:
        overshoot = float(rng.uniform(0.06, 0.2) * perimeter)
    else:
        overshoot = float(rng.uniform(0.0, 0.02) * perimeter)
    a, b = radius, radius * ratio
    half = np.array([np.hypot(a * np.cos(rotation), b * np.sin(rotation)),
                     np.hypot(a * np.sin(rotation), b * np.cos(rotation))])
    half = half * (1.25 if rough else 1.03) + width
    cx, cy = (float(rng.uniform(h + 0.03, 0.97 - h)) if h < 0.47 else 0.5 for h in half)
    return CircleSpec(presence, closure, circularity, width, cx, cy, radius, ratio, rotation,
                      float(rng.uniform(0.0, 2.0 * np.pi)), gap, overshoot)


def _ring_path(spec: CircleSpec, rng: np.random.Generator, s0: float, s1: float, scale: float,
               shift: np.ndarray, wobble: float, drift: float) -> np.ndarray:
    """Points ``(N, 2)`` along the spec's ellipse from arc length ``s0`` to ``s1`` (past ``start``).

    ``scale`` / ``shift`` move this pass relative to the spec; ``wobble`` is the relative std of the
    radius jitter (random walk + 3rd-7th harmonics, never the 2nd so circularity is untouched); ``drift``
    moves the centre linearly along the stroke so the ends of a loop miss each other.
    """
    a, b = spec.radius * scale, spec.radius * spec.axis_ratio * scale
    grid = spec.start + np.linspace(0.0, 2.0 * np.pi, 1025)
    speed = np.hypot(a * np.sin(grid), b * np.cos(grid))
    arc = np.concatenate([[0.0], np.cumsum((speed[1:] + speed[:-1]) / 2 * np.diff(grid))])
    turn = arc[-1]
    s = np.linspace(s0, s1, max(int((s1 - s0) / 0.003), 16))
    phi = np.interp(np.mod(s, turn), arc, grid) + 2.0 * np.pi * np.floor(s / turn)
    radial = 1.0 + smooth_noise(rng, len(s), 0.2 * wobble + 0.004, correlation=0.06)
    for k in rng.choice(np.arange(3, 8), size=3, replace=False):
        radial += wobble * rng.uniform(0.3, 0.7) * np.sin(k * phi + rng.uniform(0.0, 2.0 * np.pi))
    local = np.stack([a * np.cos(phi), b * np.sin(phi)], axis=1) * radial[:, None]
    c, sn = np.cos(spec.rotation), np.sin(spec.rotation)
    pts = local @ np.array([[c, -sn], [sn, c]]).T
    u = (s - s0) / max(s1 - s0, 1e-9)
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction)
    return pts + np.array([spec.cx, spec.cy]) + shift + drift * u[:, None] * direction


def _circle_strokes(spec: CircleSpec, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(points (N, 2), widths (N,)), ...]`` for the passes of a clear or rough circle."""
    turn = _perimeter(spec.radius, spec.radius * spec.axis_ratio)
    end = turn - spec.gap + spec.overshoot
    zero = np.zeros(2)
    if spec.presence == "circle_clear":
        pts = _ring_path(spec, rng, 0.0, end, 1.0, zero, wobble=0.0, drift=0.0)
        return [(pts, stroke_widths(rng, len(pts), spec.width, 0.05, taper=0.85))]
    out = []
    drift = spec.radius * rng.uniform(0.05, 0.12) * (0.4 if spec.gap else 1.0)
    wobble = float(rng.uniform(0.045, 0.075))
    style = rng.choice(["double", "sketchy", "single"], p=[0.5, 0.3, 0.2])
    if style == "sketchy":  # several overlapping arcs, each slightly off the last
        cuts = np.sort(rng.uniform(0.15, 0.85, size=int(rng.integers(1, 4)))) * end
        bounds = np.concatenate([[0.0], cuts, [end]])
        for s0, s1 in zip(bounds[:-1], bounds[1:], strict=True):
            lap = 0.0 if (s0 == 0.0 and spec.gap) else 0.04 * turn
            shift = rng.normal(0.0, 0.25 * spec.width, size=2)
            pts = _ring_path(spec, rng, max(s0 - lap, 0.0), s1, rng.uniform(0.96, 1.04), shift, wobble, 0.0)
            out.append((pts, stroke_widths(rng, len(pts), spec.width, 0.2, taper=0.5)))
        return out
    pts = _ring_path(spec, rng, 0.0, end, 1.0, zero, wobble, drift)
    out.append((pts, stroke_widths(rng, len(pts), spec.width, 0.2, taper=0.55)))
    if style == "double":  # a second, visibly separate pass that never bridges the gap
        scale = rng.uniform(1.09, 1.16) if rng.random() < 0.5 else rng.uniform(0.85, 0.91)
        if spec.gap:
            s0, s1 = rng.uniform(0.05, 0.25) * end, rng.uniform(0.7, 0.92) * end
        else:
            s0 = rng.uniform(0.0, turn)
            s1 = s0 + rng.uniform(0.6, 1.05) * turn
        shift = rng.normal(0.0, 0.015, size=2)
        pts = _ring_path(spec, rng, s0, s1, scale, shift, wobble, 0.0)
        out.append((pts, stroke_widths(rng, len(pts), spec.width * 0.9, 0.2, taper=0.4)))
    return out


def render_circle_spec(spec: CircleSpec, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """Draw ``spec`` with a random pen on random paper: RGB image ``(size, size)``."""
    pen = sample_pen(rng, spec.width)
    background = paper(rng, size)
    canvas = InkCanvas(size)
    if spec.presence == "no_circle":
        for pts in distractor_strokes(rng, spec.distractor or "empty", spec.width):
            canvas.stroke(pts, stroke_widths(rng, len(pts), spec.width, 0.1, taper=0.7))
    else:
        for pts, widths in _circle_strokes(spec, rng):
            canvas.stroke(pts, widths)
    return compose(background, canvas.coverage(), pen)


def draw_circle_sample(rng: np.random.Generator, size: int = 128) -> tuple[Image.Image, dict[str, str]]:
    """One random sample: RGB image ``(size, size)`` and its labels per head (``"na"`` where undefined)."""
    if size < 32:
        raise ValueError(f"size={size} is too small to draw on; use size >= 32")
    spec = sample_circle_spec(rng)
    return render_circle_spec(spec, rng, size), spec.labels()


def circle_sample(seed: int, index: int, size: int = 128) -> tuple[Image.Image, dict[str, str]]:
    """Sample ``index`` of the data set ``seed``; independent of every other index."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed={seed} and index={index} must be >= 0")
    return draw_circle_sample(np.random.default_rng([seed, index]), size)


def generate_circles(
    out_dir: str | pathlib.Path,
    n: int = 600,
    size: int = 128,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> pathlib.Path:
    """Write ``n`` samples to ``out_dir/images/NNNNN.png`` and ``out_dir/labels.csv``; returns ``out_dir``.

    ``labels.csv`` has columns ``image,presence,closure,circularity`` with ``image`` relative to
    ``out_dir``; closure and circularity are empty when presence is ``no_circle``.
    """
    out = pathlib.Path(out_dir)
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    labels_csv = out / "labels.csv"
    if labels_csv.exists() and not overwrite:
        raise ValueError(f"{out} already holds a data set (labels.csv); pass overwrite=True or pick a new out_dir")
    images = out / "images"
    if overwrite and images.is_dir():
        for old in images.glob("[0-9]*.png"):
            old.unlink()
    images.mkdir(parents=True, exist_ok=True)
    digits = max(5, len(str(n - 1)))
    rows = []
    for i in tqdm(range(n), desc="circles", disable=not progress, unit="img"):
        img, labels = circle_sample(seed, i, size)
        rel = f"images/{i:0{digits}d}.png"
        img.save(out / rel, format="PNG")
        circle = labels["presence"] != "no_circle"
        rows.append([rel, labels["presence"], labels["closure"] if circle else "",
                     labels["circularity"] if circle else ""])
    tmp = labels_csv.with_suffix(".csv.tmp")  # labels.csv appears only once every image is written
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
    tmp.replace(labels_csv)
    return out

