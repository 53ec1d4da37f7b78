"""Synthetic hand-drawn circles: determinism, labels.csv schema and balance, image sanity, geometry."""

from __future__ import annotations

import csv
import io
import pathlib
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from prism.data.synth import (
    CIRCULARITY,
    CLOSURE,
    NA,
    PRESENCE,
    SYNTH_GENERATORS,
    circle_sample,
    draw_circle_sample,
    generate_circles,
    get_synth_generator,
    render_circle_spec,
    sample_circle_spec,
)
from prism.data.synth._distractors import DISTRACTORS


def _read_csv(root: pathlib.Path) -> tuple[list[str], list[dict[str, str]]]:
    with (root / "labels.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _ink(img: Image.Image, drop: float = 60.0) -> np.ndarray:
    """Boolean (H, W): pixels clearly darker than the paper (the median pixel)."""
    gray = np.asarray(img, dtype=np.float32).mean(axis=2)
    return gray < np.median(gray) - drop


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_registry_lists_circles_and_rejects_unknown_names():
    assert SYNTH_GENERATORS["circles"] is generate_circles
    assert get_synth_generator("circles") is generate_circles
    with pytest.raises(ValueError, match="circles"):
        get_synth_generator("squares")


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_circles(tmp_path / "a", n=6, size=64, seed=7, progress=False)
    b = generate_circles(tmp_path / "b", n=6, size=64, seed=7, progress=False)
    c = generate_circles(tmp_path / "c", n=6, size=64, seed=8, progress=False)
    names = sorted(p.name for p in (a / "images").iterdir())
    assert names == [f"{i:05d}.png" for i in range(6)]
    for name in names:
        assert (a / "images" / name).read_bytes() == (b / "images" / name).read_bytes()
    assert (a / "labels.csv").read_bytes() == (b / "labels.csv").read_bytes()
    assert any((a / "images" / n).read_bytes() != (c / "images" / n).read_bytes() for n in names)


def test_each_index_is_independent_of_the_others(tmp_path):
    root = generate_circles(tmp_path / "d", n=6, size=64, seed=3, progress=False)
    img, _ = circle_sample(3, 4, size=64)  # what a second process would draw for index 4 alone
    assert _png_bytes(img) == (root / "images" / "00004.png").read_bytes()


def test_labels_csv_schema_balance_and_images(tmp_path):
    n = 300
    root = generate_circles(tmp_path / "ds", n=n, size=64, seed=0, progress=False)
    columns, rows = _read_csv(root)
    assert columns == ["image", "presence", "closure", "circularity"]
    assert len(rows) == n
    presence = Counter(r["presence"] for r in rows)
    assert set(presence) == set(PRESENCE)
    assert all(70 <= presence[c] <= 130 for c in PRESENCE), presence
    circles = [r for r in rows if r["presence"] != "no_circle"]
    for head, classes in (("closure", CLOSURE), ("circularity", CIRCULARITY)):
        counts = Counter(r[head] for r in circles)
        assert set(counts) == set(classes)
        assert all(0.35 <= counts[c] / len(circles) <= 0.65 for c in classes), (head, counts)
    for r in rows:
        empty = r["closure"] == "" and r["circularity"] == ""
        assert empty == (r["presence"] == "no_circle"), r
        with Image.open(root / r["image"]) as img:
            assert img.mode == "RGB" and img.size == (64, 64)


def test_refuses_existing_dataset_unless_overwrite(tmp_path):
    root = generate_circles(tmp_path / "ds", n=5, size=32, progress=False)
    with pytest.raises(ValueError, match="overwrite=True"):
        generate_circles(root, n=5, size=32, progress=False)
    generate_circles(root, n=3, size=32, seed=1, progress=False, overwrite=True)
    assert sorted(p.name for p in (root / "images").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert len(_read_csv(root)[1]) == 3


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda t: generate_circles(t, n=0, progress=False), "n=0"),
        (lambda t: generate_circles(t, n=2, size=16, progress=False), "size >= 32"),
        (lambda t: circle_sample(-1, 0), "must be >= 0"),
        (lambda t: sample_circle_spec(np.random.default_rng(0), presence="circle"), "valid"),
        (lambda t: sample_circle_spec(np.random.default_rng(0), "no_circle", closure="closed"), "only defined"),
    ],
)
def test_bad_arguments_raise_value_error(tmp_path, call, match):
    with pytest.raises(ValueError, match=match):
        call(tmp_path / "x")


@pytest.mark.parametrize("seed", range(30))
def test_draw_sample_labels_are_consistent(seed):
    img, labels = draw_circle_sample(np.random.default_rng(seed), size=48)
    assert img.mode == "RGB" and img.size == (48, 48)
    assert set(labels) == {"presence", "closure", "circularity"}
    if labels["presence"] == "no_circle":
        assert labels["closure"] == labels["circularity"] == NA
    else:
        assert labels["closure"] in CLOSURE and labels["circularity"] in CIRCULARITY


@pytest.mark.parametrize("presence", ["circle_clear", "circle_resembles"])
@pytest.mark.parametrize("seed", range(4))
def test_circles_have_ink(presence, seed):
    rng = np.random.default_rng(seed)
    img = render_circle_spec(sample_circle_spec(rng, presence), rng, size=64)
    assert 0.03 < _ink(img).mean() < 0.5


@pytest.mark.parametrize("kind", sorted(DISTRACTORS))
def test_no_circle_kinds_draw_marks_except_empty(kind):
    from dataclasses import replace

    rng = np.random.default_rng(0)
    spec = replace(sample_circle_spec(rng, "no_circle"), distractor=kind)
    ink = _ink(render_circle_spec(spec, rng, size=64)).mean()
    assert (ink == 0.0) if kind == "empty" else (ink > 0.01)


def _polar_ink(seed: int, closure: str) -> tuple[np.ndarray, np.ndarray, object, int]:
    size = 128
    rng = np.random.default_rng(seed)
    spec = sample_circle_spec(rng, "circle_clear", closure, "circular")
    ys, xs = np.nonzero(_ink(render_circle_spec(spec, rng, size)))
    dx, dy = xs + 0.5 - spec.cx * size, ys + 0.5 - spec.cy * size
    return np.hypot(dx, dy), np.arctan2(dy, dx), spec, size


@pytest.mark.parametrize("seed", range(6))
def test_clean_circle_ink_lies_at_one_radius(seed):
    dist, _, spec, size = _polar_ink(seed, "closed")
    lo = spec.radius * spec.axis_ratio * size - spec.width * size
    hi = spec.radius * size + spec.width * size
    inside = (dist >= lo - 1.5) & (dist <= hi + 1.5)
    assert inside.mean() > 0.98
    assert abs(np.median(dist) - spec.radius * (1 + spec.axis_ratio) / 2 * size) < 0.35 * spec.width * size + 1


@pytest.mark.parametrize("seed", range(6))
def test_almost_closed_leaves_an_angular_gap(seed):
    bins = np.linspace(-np.pi, np.pi, 73)  # 5 degree bins
    _, ang, _, _ = _polar_ink(seed, "closed")
    assert (np.histogram(ang, bins)[0] > 0).all()
    _, ang, _, _ = _polar_ink(seed, "almost_closed")
    assert (np.histogram(ang, bins)[0] == 0).any()


@pytest.mark.parametrize("index", [1466, 1799, 2247])
def test_shapes_shrunk_to_fit_are_placed(index):
    """Regression: a distractor shrunk to exactly the room left had a placement range of -1e-17 and crashed."""
    img, labels = circle_sample(0, index, 128)
    assert img.size == (128, 128) and labels["presence"] in PRESENCE
