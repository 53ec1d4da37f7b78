"""QuickDraw drawings: the public *simplified* ``.ndjson`` format, read and rendered to images.

One JSON object per line::

    {"word": "cat", "countrycode": "US", "timestamp": "2017-03-09 00:28:55.637 UTC", "recognized": true,
     "key_id": "5201136883597312", "drawing": [[[x0, x1, ...], [y0, y1, ...]], ...]}

``drawing`` is a list of strokes, each ``[xs, ys]`` with integer coordinates in 0..255 (the simplified
files are aligned to the top-left corner and scaled so that the longer side spans 0..255).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["Drawing", "QuickDrawError", "parse_drawing", "read_ndjson", "render_drawing"]

CANVAS = 256
"""The simplified format's coordinate range is 0..255."""


class QuickDrawError(ValueError):
    """A line of a ``.ndjson`` file that is not a QuickDraw drawing; the message names file and line."""


@dataclass(frozen=True)
class Drawing:
    """One drawing: its class (``word``), id and strokes, each an ``(N, 2)`` float array of ``(x, y)``."""

    word: str
    key_id: str
    strokes: tuple[np.ndarray, ...]
    recognized: bool = True


def parse_drawing(record: dict, where: str = "drawing") -> Drawing:
    """A decoded JSON object → :class:`Drawing`; :class:`QuickDrawError` naming ``where`` when malformed."""
    if not isinstance(record, dict) or "word" not in record or "drawing" not in record:
        raise QuickDrawError(f"{where}: not a QuickDraw drawing (needs 'word' and 'drawing')")
    strokes = []
    raw = record["drawing"]
    if not isinstance(raw, list) or not raw:
        raise QuickDrawError(f"{where}: 'drawing' must be a non-empty list of strokes [[xs], [ys]]")
    for i, stroke in enumerate(raw):
        try:
            xs, ys = stroke[0], stroke[1]
            pts = np.stack([np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)], axis=1)
        except (TypeError, ValueError, IndexError) as e:
            raise QuickDrawError(f"{where}: stroke {i} is not [[x...], [y...]] of equal length ({e})") from None
        if len(pts) == 0 or not np.isfinite(pts).all():
            raise QuickDrawError(f"{where}: stroke {i} is empty or not finite")
        strokes.append(pts)
    return Drawing(str(record["word"]), str(record.get("key_id", "")), tuple(strokes),
                   bool(record.get("recognized", True)))


def read_ndjson(path: str | Path) -> Iterator[Drawing]:
    """The drawings of one ``.ndjson`` file, lazily; a bad line raises :class:`QuickDrawError` naming it."""
    with Path(path).open() as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise QuickDrawError(f"{where}: not JSON ({e.msg})") from None
            yield parse_drawing(record, where)


def render_drawing(strokes: tuple[np.ndarray, ...] | list[np.ndarray], size: int = 128, line_width: float = 3.0,
                   margin: float = 0.06) -> Image.Image:
    """Black strokes on white, ``size`` × ``size`` RGB: the drawing scaled to fit inside ``margin``
    (fraction of the side) keeping its aspect ratio, centred, drawn 4× supersampled and downsampled
    (anti-aliased); ``line_width`` is in pixels of the output for a 0..255 drawing."""
    ss = 4
    big = size * ss
    pts = np.concatenate(strokes)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    span = float(max(hi - lo)) or 1.0
    width = max(1, round(line_width * ss))
    scale = max(1e-6, big * (1 - 2 * margin) - width) / span  # the strokes' outer edges stay inside the margin
    offset = (big - (hi - lo) * scale) / 2 - lo * scale
    canvas = Image.new("L", (big, big), 255)
    draw = ImageDraw.Draw(canvas)
    for stroke in strokes:
        xy = [tuple(p) for p in (stroke * scale + offset).tolist()]
        if len(xy) == 1:
            x, y = xy[0]
            draw.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=0)
        else:
            draw.line(xy, fill=0, width=width, joint="curve")
    return canvas.resize((size, size), Image.Resampling.BOX).convert("RGB")
