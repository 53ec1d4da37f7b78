"""``prism export sam-embeddings`` through Ray Data on the local Ray: a folder with subfolders becomes one file
per image with its stem under the mirrored folders, an index, the embeddings of the encoder run image by image;
existing files are kept unless told."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from prism.cli.main import main

pytestmark = [pytest.mark.ray]


def test_a_folder_exports_one_file_per_image(ray_local, tmp_path, capsys):
    from safetensors.torch import load_file

    from prism.inference.sam_embeddings import EmbedImages

    rng = np.random.default_rng(0)
    src = tmp_path / "photos"
    names = ["a.jpg", "b.png", "trip/c.jpg", "trip/day2/d.png", "trip/e.jpg"]
    for i, name in enumerate(names):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (30 + i * 5, 40, 3), dtype=np.uint8)).save(src / name)
    weights = tmp_path / "sam_tiny.pth"
    from prism.backbones import create_backbone

    torch.save({f"image_encoder.{k}": v for k, v in create_backbone("sam_tiny", img_size=64, seed=1).model
                .state_dict().items()}, weights)
    out = tmp_path / "emb"
    args = ["export", "sam-embeddings", str(src), "--out", str(out), "--backbone", "sam_tiny", "--weights",
            str(weights), "--img-size", "64", "--batch-size", "2"]
    assert main(args) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.safetensors"))
    assert files == sorted(n.rsplit(".", 1)[0] + ".safetensors" for n in names)
    with (out / "index.csv").open() as f:
        index = list(csv.DictReader(f))
    assert len(index) == len(names) and {r["original_h"] for r in index} == {str(30 + i * 5) for i in range(5)}
    one = EmbedImages("sam_tiny", str(weights), 64, "safetensors")
    x, _, _ = one.prepare(str(src / "trip/day2/d.png"))
    with torch.no_grad():
        alone = one.model(torch.from_numpy(x)[None])["patches"][0].permute(2, 0, 1)
    torch.testing.assert_close(load_file(out / "trip/day2/d.safetensors")["embedding"], alone, atol=1e-5, rtol=1e-5)
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err  # nothing overwritten by accident
    assert main([*args, "--overwrite", "--format", "npy"]) == 0
    assert np.load(out / "a.npy").shape == (32, 4, 4)
    assert main(["export", "sam-embeddings", str(src), "--out", str(out), "--backbone", "dinov2_tiny"]) == 2
    assert "not a SAM image encoder" in capsys.readouterr().err
