"""Image decoding for Ray Data: eval pixels equal the Predictor's, training decodes JPEGs at a reduced scale,
and the datasets are split into blocks so decoding runs in parallel."""

import io
import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from prism.data.images import DecodeImages, crop_draft_side, decode_image, read_bytes, resize_rgb
from tests.conftest import CIRCLES_JOB


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth gradient with noise and a few shapes: compresses and resizes like a photo."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 120 + 60 * np.sin(xx[..., None] / (w / 7) + np.arange(3)) * np.cos(yy[..., None] / (h / 5))
    img = img + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


@pytest.fixture
def images(tmp_path):
    """RGB JPEG, large RGB JPEG, grayscale JPEG, RGBA PNG and palette PNG files."""
    base = _photo(120, 90)
    files = {
        "rgb.jpg": base,
        "big.jpg": _photo(1600, 1200, seed=1),
        "gray.jpg": base.convert("L"),
        "rgba.png": base.convert("RGBA"),
        "pal.png": base.convert("P"),
    }
    for name, img in files.items():
        img.save(tmp_path / name, quality=90) if name.endswith(".jpg") else img.save(tmp_path / name)
    return {name: str(tmp_path / name) for name in files}


def test_eval_decode_equals_predictor_preprocessing(images):
    # validation (DecodeImages) and the Predictor (decode_image + resize_rgb) must see identical pixels
    paths = np.array(list(images.values()), dtype=object)
    out = DecodeImages(32)({"path": paths})["image"]
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(out[i], resize_rgb(decode_image(read_bytes(p), p), 32))
    assert out.shape == (len(paths), 32, 32, 3) and out.dtype == np.uint8


def test_eval_decode_converts_only_non_rgb_images(images, monkeypatch):
    # Image.convert("RGB") of an RGB image is a full copy: RGB JPEGs must not pay it (twice, before the fix)
    calls = []
    convert = Image.Image.convert
    monkeypatch.setattr(Image.Image, "convert", lambda self, *a, **k: calls.append(self.mode) or convert(self, *a, **k))
    DecodeImages(16)({"path": np.array([images["rgb.jpg"], images["big.jpg"]], dtype=object)})
    assert calls == []
    out = DecodeImages(16)({"path": np.array([images["gray.jpg"], images["rgba.png"]], dtype=object)})
    assert calls == ["L", "RGBA"] and out["image"].shape == (2, 16, 16, 3)


def test_eval_decoder_ships_without_torchvision():
    # the eval callable is pickled into every Ray Data task; it needs neither torch nor torchvision
    decoder = DecodeImages(16)
    assert decoder.augment is None and decoder.draft_side is None
    assert b"torchvision" not in pickle.dumps(decoder)


@pytest.mark.parametrize("size,crop_scale,expected", [
    (224, (0.8, 1.0), 290),    # ceil(224 / sqrt(0.8 * 3/4))
    (224, (0.08, 1.0), 915),   # ImageNet-style crops need nearly the full resolution
    (112, (1.0, 1.0), 130),
])
def test_crop_draft_side_table(size, crop_scale, expected):
    assert crop_draft_side(size, crop_scale, (3 / 4, 4 / 3)) == expected


@pytest.mark.parametrize("shape", [(290, 290), (290, 600), (800, 290)])
def test_every_crop_of_a_draft_sized_image_is_at_least_the_output(shape):
    from torchvision.transforms import RandomResizedCrop

    side = crop_draft_side(224, (0.8, 1.0), (3 / 4, 4 / 3))
    assert min(shape) == side
    torch.manual_seed(0)
    img = torch.zeros(3, *shape)
    for _ in range(300):
        _, _, h, w = RandomResizedCrop.get_params(img, scale=[0.8, 1.0], ratio=[3 / 4, 4 / 3])
        assert min(h, w) >= 224


def test_train_decodes_large_jpegs_at_reduced_scale(images):
    decoder = DecodeImages(64, train=True, crop_scale=(0.8, 1.0), brightness=0.1, rot90=True)
    side = crop_draft_side(64, (0.8, 1.0), decoder.augment.transforms[0].ratio)
    img = decoder.decode(images["big.jpg"])
    assert img.mode == "RGB" and img.size == (200, 150)  # 1600 x 1200 at 1/8: still >= side (83) both ways
    assert min(img.size) >= side
    assert decoder.decode(images["rgb.jpg"]).size == (120, 90)  # small images decode at full size
    out = decoder({"path": np.array(list(images.values()), dtype=object), "y_presence": np.arange(5)})
    assert out["image"].shape == (5, 64, 64, 3) and out["image"].dtype == np.uint8
    assert out["y_presence"].tolist() == [0, 1, 2, 3, 4]


def test_draft_decode_is_close_to_full_decode(images):
    data = read_bytes(images["big.jpg"])
    full = resize_rgb(decode_image(data), 224).astype(int)
    for side in (224, 448):
        reduced = decode_image(data, min_side=side)
        assert min(reduced.size) >= side and reduced.size[0] < 1600
        diff = np.abs(resize_rgb(reduced, 224).astype(int) - full)
        assert diff.mean() < 1.0 and diff.max() <= 16, (side, diff.mean(), diff.max())


def test_decode_image_min_side_ignored_for_png(images):
    assert decode_image(read_bytes(images["rgba.png"]), min_side=8).size == (120, 90)


@pytest.mark.ray
def test_build_datasets_splits_into_parallel_blocks(ray_session, tmp_path, monkeypatch):
    # from_pandas(df) alone is ONE block: one decode task on one core, nothing streamed until all is decoded
    from prism.config import load_config
    from prism.data import build_datasets
    from prism.data.datasets import FIRST_BLOCK_SPLIT, rows_dataset
    from prism.tasks import build_task

    monkeypatch.chdir(tmp_path)
    cfg = load_config(CIRCLES_JOB, [f"data.synthetic.cache_dir={tmp_path}", "data.synthetic.n=100",
                                    "data.synthetic.size=64", "data.map_batch_size=16", "data.val_fraction=0.3"])
    data = build_datasets(cfg, build_task(cfg), 24)
    assert (data.n_train, data.n_val) == (70, 30)
    for ds, n in ((data.train, data.n_train), (data.val, data.n_val)):
        done = ds.materialize()
        # the first map batch (16 rows) as FIRST_BLOCK_SPLIT tasks of 4 rows, then one task per 16 rows
        tasks = FIRST_BLOCK_SPLIT + math.ceil((n - 16) / 16)
        assert done.num_blocks() == tasks and done.count() == n
        assert f"{tasks} tasks executed" in done.stats()
    batch = next(iter(data.val.iter_batches(batch_size=8)))
    assert batch["image"].shape == (8, 24, 24, 3) and batch["image"].dtype == np.uint8
    import pandas as pd

    df = pd.DataFrame({"path": [f"p{i}" for i in range(10)]})
    assert rows_dataset(df, 4).num_blocks() == 3 and rows_dataset(df.iloc[:0], 4).count() == 0
    assert sorted(rows_dataset(df, 4).to_pandas()["path"]) == sorted(df["path"])
    assert rows_dataset(df, 1, max_blocks=4).num_blocks() == 4  # past the cap, blocks grow (3 rows each)
    split = rows_dataset(df, 4, first_block_split=4)  # the first block (4 rows) as 4 blocks of 1, then 4, 2
    assert [len(b) for b in split.iter_batches(batch_size=None, batch_format="pandas")] == [1, 1, 1, 1, 4, 2]
    assert list(split.to_pandas()["path"]) == list(df["path"])
    big = rows_dataset(df, 2, max_blocks=2, first_block_split=2)  # blocks of 5 past the cap; the first 2 rows cut
    assert [len(b) for b in big.iter_batches(batch_size=None, batch_format="pandas")] == [1, 1, 5, 3]


def test_decode_image_names_the_source_on_failure():
    with pytest.raises(ValueError, match="cannot decode image broken.jpg") as caught:
        decode_image(b"\xff\xd8 not a jpeg", "broken.jpg", min_side=16)
    assert "BytesIO" not in str(caught.value)  # the source's name, not the repr of PIL's buffer
    buf = io.BytesIO()
    _photo(40, 30).save(buf, "JPEG")
    assert decode_image(buf.getvalue(), min_side=16).size == (40, 30)  # 40 // 16 = 2, 30 // 16 = 1: no scaling


def test_to_model_input_matches_the_textbook_normalisation():
    """``(x / 255 - mean) / std`` in channels-first float32, whatever the fused arithmetic inside."""
    import torch

    from prism.engine.inputs import to_model_input

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    images = torch.randint(0, 256, (3, 10, 12, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = to_model_input(images, mean, std)
    ref = (images.permute(0, 3, 1, 2).double() / 255 - torch.tensor(mean).view(1, 3, 1, 1).double()) \
        / torch.tensor(std).view(1, 3, 1, 1).double()
    assert out.shape == (3, 3, 10, 12) and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=0)
    assert images.dtype == torch.uint8 and images.shape == (3, 10, 12, 3)  # the input is not modified
