"""The VOC reader: one row per (image, prompted class); binary, palette and void-bordered masks; lists, a
custom list or every image; folder overrides; per-image prompts; errors that name the image id."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from prism.data.synth import generate_textseg
from prism.data.voc import read_mask, read_voc


@pytest.fixture
def voc(tmp_path):
    return generate_textseg(tmp_path / "voc", n=6, size=40, seed=0, progress=False)


CLASSES = {1: "circle", 2: "square"}


def test_rows_per_prompted_class_from_the_split_list(voc):
    table = read_voc(voc, "train", classes=CLASSES)
    ids = (voc / "ImageSets/Segmentation/train.txt").read_text().split()
    assert list(table.rows["id"]) == [i for i in ids for _ in (1, 2)]
    assert list(table.rows["prompt"][:2]) == ["circle", "square"] and table.empty == []
    every = read_voc(voc, None, classes=CLASSES)
    assert len(every.rows) == 12
    custom = voc / "mine.txt"
    custom.write_text("00003\n")
    assert list(read_voc(voc, list_file=custom, classes=CLASSES).rows["class_index"]) == [1, 2]


def test_binary_palette_and_void_masks(tmp_path):
    binary = np.zeros((4, 5), dtype=np.uint8)
    binary[1:3, 1:3] = 255
    Image.fromarray(binary, mode="L").save(tmp_path / "b.png")
    assert read_mask(tmp_path / "b.png").tolist() == (binary // 255).tolist()
    pal = np.array([[0, 1, 255], [2, 2, 0]], dtype=np.uint8)
    im = Image.fromarray(pal, mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253)
    im.save(tmp_path / "p.png")
    assert read_mask(tmp_path / "p.png").tolist() == pal.tolist()  # 255 stays void


def test_folder_overrides_and_per_image_prompts(voc, tmp_path):
    images, masks = tmp_path / "img", tmp_path / "msk"
    (voc / "JPEGImages").rename(images)
    (voc / "SegmentationClass").rename(masks)
    table = read_voc(voc, "val", images=images, masks=masks, classes=CLASSES, prompts={"00000": "the square"})
    assert set(table.rows["image"].map(lambda p: p.split("/")[-2])) == {"img"}
    val = (voc / "ImageSets/Segmentation/val.txt").read_text().split()
    table = read_voc(voc, None, images=images, masks=masks, classes=CLASSES, prompts={val[0]: "the square"})
    mine = table.rows[table.rows["id"] == val[0]]
    assert list(mine["prompt"]) == ["the square"] and list(mine["class_index"]) == [-1]


def test_errors_name_the_image(voc):
    (voc / "SegmentationClass" / "00002.png").unlink()
    with pytest.raises(ValueError, match="image id 00002: its mask .* is missing"):
        read_voc(voc, None, classes=CLASSES)
    Image.new("L", (10, 12)).save(voc / "SegmentationClass" / "00002.png")
    with pytest.raises(ValueError, match="image id 00002: the mask is 10x12 but the image is 40x40"):
        read_voc(voc, None, classes=CLASSES)
    empty = voc / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="names no image"):
        read_voc(voc, list_file=empty, classes=CLASSES)
    with pytest.raises(ValueError, match="class index 2 has no prompt"):
        read_voc(voc, "train", classes={1: "circle"})
    with pytest.raises(ValueError, match="nope.txt not found"):
        read_voc(voc, "nope", classes=CLASSES)
