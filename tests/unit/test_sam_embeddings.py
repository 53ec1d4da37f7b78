"""SAM embeddings of images: SAM's own preprocessing and encoder (equal to segment-anything's SamPredictor),
one file per image in each format, and clear errors on bad sources."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from prism.inference.sam_embeddings import EmbedImages, list_images


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from prism.backbones import create_backbone

    path = tmp_path_factory.mktemp("w") / "sam_tiny.pth"
    torch.save({f"image_encoder.{k}": v for k, v in create_backbone("sam_tiny", img_size=64, seed=3).model.state_dict()
                .items()}, path)
    return path


def photo(path, size):
    rng = np.random.default_rng(len(str(path)))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_embeddings_are_what_sams_predictor_computes(tmp_path, weights):
    from segment_anything import SamPredictor
    from segment_anything.modeling import Sam

    from prism.tasks.segment.sam_parts import build_mask_decoder, build_prompt_encoder

    image = photo(tmp_path / "a.png", (50, 30))  # not square: resized by its longest side, then padded
    embed = EmbedImages("sam_tiny", str(weights), 64, "safetensors")
    out = embed({"path": np.array([str(image)]), "target": np.array([str(tmp_path / "out" / "a.safetensors")])})
    assert list(out["original_size"][0]) == [30, 50] and list(out["input_size"][0]) == [38, 64]
    from safetensors import safe_open

    with safe_open(tmp_path / "out" / "a.safetensors", "pt") as f:
        ours, meta = f.get_tensor("embedding"), f.metadata()
    assert json.loads(meta["original_size"]) == [30, 50] and json.loads(meta["backbone"]) == "sam_tiny"
    sam = Sam(embed.model.model, build_prompt_encoder("tiny", 4, 64), build_mask_decoder("tiny")).eval()
    predictor = SamPredictor(sam)
    predictor.set_image(np.asarray(Image.open(image).convert("RGB")))
    torch.testing.assert_close(ours, predictor.features[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["npy", "pt"])
def test_other_formats_hold_the_same_array(tmp_path, weights, fmt):
    image = photo(tmp_path / "b.jpg", (40, 40))
    embed = EmbedImages("sam_tiny", str(weights), 64, fmt)
    target = tmp_path / f"b.{fmt}"
    embed({"path": np.array([str(image)]), "target": np.array([str(target)])})
    arr = np.load(target) if fmt == "npy" else torch.load(target, weights_only=True)["embedding"].numpy()
    assert arr.shape == (32, 4, 4) and arr.dtype == np.float32


def test_sources_a_folder_recursive_or_not_and_a_list_file(tmp_path):
    photo(tmp_path / "imgs" / "x.png", (20, 20))
    photo(tmp_path / "imgs" / "sub" / "y.jpg", (20, 20))
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    paths, base = list_images(tmp_path / "imgs")
    assert [p.relative_to(base).as_posix() for p in paths] == ["sub/y.jpg", "x.png"]
    assert [p.name for p in list_images(tmp_path / "imgs", recursive=False)[0]] == ["x.png"]
    listing = tmp_path / "list.txt"
    listing.write_text("imgs/x.png\n# a comment\nimgs/sub/y.jpg\n")
    assert [p.name for p in list_images(listing)[0]] == ["x.png", "y.jpg"]
    listing.write_text("imgs/gone.png\n")
    with pytest.raises(ValueError, match="missing image"):
        list_images(listing)
    with pytest.raises(ValueError, match="neither a folder nor a list file"):
        list_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        list_images(tmp_path / "empty")
