"""Synthetic data sets generated on the fly (no download), for demos, tests and smoke runs.

``SYNTH_GENERATORS`` maps a generator name to ``fn(out_dir, n, size, seed, progress, overwrite, **options)
-> out_dir``; each writes ``out_dir/images/*.png`` and ``out_dir/labels.csv`` (``shapes``: ``out_dir/instances.json``, COCO; ``textseg``: the VOC layout) (``options``: what the task
config asks for, e.g. the class names of ``sketches``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prism.data.synth.circles import (
    CIRCULARITY,
    CLOSURE,
    HEADS,
    NA,
    PRESENCE,
    CircleSpec,
    circle_sample,
    draw_circle_sample,
    generate_circles,
    render_circle_spec,
    sample_circle_spec,
)
from prism.data.synth.shapes import generate_shapes
from prism.data.synth.sketches import generate_sketches, write_sketch_ndjson
from prism.data.synth.textseg import generate_textseg

__all__ = [
    "CIRCULARITY",
    "CLOSURE",
    "HEADS",
    "NA",
    "PRESENCE",
    "SYNTH_GENERATORS",
    "CircleSpec",
    "circle_sample",
    "draw_circle_sample",
    "generate_circles",
    "get_synth_generator",
    "render_circle_spec",
    "sample_circle_spec",
    "generate_shapes",
    "generate_sketches",
    "generate_textseg",
    "write_sketch_ndjson",
]

SYNTH_GENERATORS: dict[str, Callable[..., Path]] = {"circles": generate_circles, "sketches": generate_sketches,
                                                    "shapes": generate_shapes, "textseg": generate_textseg}


def get_synth_generator(name: str) -> Callable[..., Path]:
    """The generator registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    try:
        return SYNTH_GENERATORS[name]
    except KeyError:
        raise ValueError(f"unknown synthetic generator {name!r}; valid: {sorted(SYNTH_GENERATORS)}") from None
