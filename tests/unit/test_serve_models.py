"""The fabricated models and images the Serve tests use (``tests/helpers``) are what those tests assume.

Two versions of one registered model must predict differently (so a promotion visibly changes answers),
and the crafted bomb must have a readable header but no decodable pixels.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.helpers.bundles import fabricate_bundle
from tests.helpers.images import bomb_png, sample_images


def test_fabricated_versions_predict_differently(tmp_path):
    from prism.inference.predictor import Predictor

    images = sample_images(tmp_path / "img", n=2)
    a = Predictor.from_bundle(fabricate_bundle(tmp_path / "a", seed=1), device="cpu")
    b = Predictor.from_bundle(fabricate_bundle(tmp_path / "b", seed=2), device="cpu")
    ra, rb = a.predict([str(p) for p in images], tta=False), b.predict([str(p) for p in images], tta=False)
    assert ra[0]["presence"]["probabilities"] != rb[0]["presence"]["probabilities"]


def test_bomb_png_header_is_read_but_not_decodable():
    data = bomb_png(2000, 2000)
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (2000, 2000)
        with pytest.raises(OSError):
            img.load()
