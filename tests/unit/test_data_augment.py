"""Training augmentation: seeded per row, and a crop that can keep shapes undistorted."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from prism.config import AugmentConfig
from prism.data.images import AUG_SEED_COLUMN, DecodeImages


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("aug")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        p = d / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _decode(paths, seeds=None, **kw):
    batch = {"path": np.array(paths, dtype=object)}
    if seeds is not None:
        batch[AUG_SEED_COLUMN] = np.asarray(seeds, dtype=np.float64)
    return DecodeImages(32, train=True, brightness=0.2, rot90=True, **kw)(batch)


def test_same_seeds_same_pixels_whatever_the_batch(images):
    seeds = [0.11, 0.52, 0.73, 0.94]
    whole = _decode(images, seeds)
    assert AUG_SEED_COLUMN not in whole  # consumed, not passed on to the trainer
    # the same rows in other batches and another order give the same augmented pixels
    parts = [_decode(images[2:], seeds[2:])["image"], _decode(images[:2][::-1], seeds[:2][::-1])["image"]]
    np.testing.assert_array_equal(whole["image"][2:], parts[0])
    np.testing.assert_array_equal(whole["image"][:2], parts[1][::-1])


def test_other_seeds_other_pixels_and_global_rng_untouched(images):
    import torch

    a = _decode(images, [0.1, 0.2, 0.3, 0.4])["image"]
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    b = _decode(images, [0.6, 0.7, 0.8, 0.9])["image"]
    assert all(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    np.testing.assert_array_equal(torch.rand(3), before)  # the per-row generator left the global RNG alone


def test_without_seed_column_draws_from_the_global_rng(images):
    import torch

    torch.manual_seed(5)
    a = _decode(images)["image"]
    torch.manual_seed(5)
    b = _decode(images)["image"]
    c = _decode(images)["image"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)


def _disc(path) -> str:
    img = Image.new("RGB", (200, 200), "white")  # every crop of 60-70 % of the area holds the whole disc
    ImageDraw.Draw(img).ellipse([85, 85, 115, 115], fill="black")
    img.save(path)
    return str(path)


def _axis_ratio(image: np.ndarray) -> float:
    ys, xs = np.nonzero(image.mean(axis=2) < 128)
    return (np.ptp(ys) + 1) / (np.ptp(xs) + 1)


def test_square_crop_ratio_keeps_a_circle_circular(tmp_path):
    """The default crop stretches by up to 4/3; crop_ratio [1, 1] keeps a disc a disc (circularity labels)."""
    path = _disc(tmp_path / "disc.png")
    seeds = np.linspace(0.01, 0.99, 24)
    square = DecodeImages(128, train=True, hflip=False, crop_scale=(0.6, 0.7), crop_ratio=(1.0, 1.0))
    default = DecodeImages(128, train=True, hflip=False, crop_scale=(0.6, 0.7))
    batch = {"path": np.array([path] * len(seeds), dtype=object), AUG_SEED_COLUMN: seeds}
    kept = [_axis_ratio(im) for im in square(batch)["image"]]
    stretched = [_axis_ratio(im) for im in default(batch)["image"]]
    assert max(abs(r - 1) for r in kept) < 0.06, kept
    assert max(abs(r - 1) for r in stretched) > 0.2, stretched


@pytest.mark.parametrize("bad", [{"crop_ratio": (1.5, 1.0)}, {"crop_ratio": (0.0, 1.0)}, {"crop_scale": (0.5, 1.2)}])
def test_bad_crop_ranges_are_refused(bad):
    with pytest.raises(ValueError, match="crop_"):
        AugmentConfig(**bad)


def test_row_seeds_touch_only_the_cpu_generator(images, monkeypatch):
    """``torch.manual_seed`` also queues accelerator seeds with a recorded stack (~0.7 ms a row in a Ray task):
    a row's seed goes to the CPU generator alone, and gives the pixels that seed gave before."""
    import torch

    seeds = [0.11, 0.52, 0.73, 0.94]
    expected = []
    for path, seed in zip(images, seeds, strict=True):  # what torch.manual_seed(seed) gives, row by row
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed * 2**32))
            expected.append(_decode([path])["image"][0])

    def refuse(*_):
        raise AssertionError("torch.manual_seed called per row")

    monkeypatch.setattr(torch, "manual_seed", refuse)
    np.testing.assert_array_equal(_decode(images, seeds)["image"], np.stack(expected))
