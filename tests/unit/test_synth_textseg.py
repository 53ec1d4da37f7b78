"""The synthetic text-prompted segmentation set: VOC layout, palette masks with VOC's colours, a circle and a
square in every image (never overlapping, coloured alike), masks exactly where the shapes were drawn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from prism.data.synth import SYNTH_GENERATORS, generate_textseg


def test_voc_layout_split_and_palette_masks(tmp_path):
    out = SYNTH_GENERATORS["textseg"](tmp_path / "ts", n=10, size=64, seed=2, progress=False)
    assert out == tmp_path / "ts" and json.loads((out / "classes.json").read_text()) == {"1": "circle", "2": "square"}
    train = (out / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (out / "ImageSets/Segmentation/val.txt").read_text().split()
    assert len(val) == 2 and sorted(train + val) == [f"{i:05d}" for i in range(10)]
    mask = Image.open(out / "SegmentationClass" / f"{val[0]}.png")
    assert mask.mode == "P" and mask.getpalette()[3:9] == [128, 0, 0, 0, 128, 0]  # VOC's colours of 1 and 2
    with pytest.raises(ValueError, match="already holds"):
        generate_textseg(out, n=10, size=64, progress=False)


@pytest.mark.parametrize("index", range(6))
def test_masks_cover_the_drawn_shapes_and_only_them(tmp_path, index):
    out = generate_textseg(tmp_path / "ts", n=6, size=80, seed=index, progress=False)
    name = f"{index:05d}"
    image = np.asarray(Image.open(out / "JPEGImages" / f"{name}.jpg").convert("RGB"), dtype=np.float64)
    label = np.asarray(Image.open(out / "SegmentationClass" / f"{name}.png"))
    for cls, fill in ((1, np.pi / 4), (2, 1.0)):
        ys, xs = np.nonzero(label == cls)
        assert len(ys) > 0
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert len(ys) / box == pytest.approx(fill, abs=0.06)  # a disc fills π/4 of its box, a square all of it
        assert image[label == cls].max(axis=1).mean() > 130  # the shapes' bright fills (>= 140 before JPEG)
    assert image[label == 0].max(axis=1).mean() < 110  # the dark noisy background
