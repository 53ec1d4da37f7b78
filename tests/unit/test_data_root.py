"""``data.root`` + ``data.labels`` elsewhere: relative image paths resolve against ``data.root``, else the CSV's folder."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from prism.config import JobConfig
from prism.data.datasets import split_labels
from prism.data.table import BadRowsError, read_label_table
from prism.inference.evaluate import evaluate
from prism.inference.predictor import Predictor
from prism.tasks.multihead.task import MultiHeadTask
from tests.helpers.models import Normalisation

HEADS = [{"name": "shape", "classes": ["round", "square"]}]
N = 8


def job(**data) -> JobConfig:
    return JobConfig.model_validate({
        "task": {"name": "multihead", "heads": HEADS, "tta": []},
        "stages": [{"kind": "probe", "epochs": 1, "lr": {"head": 1e-3}}],
        "backbone": {"name": "dinov2_tiny", "img_size": 14},
        "data": {"val_fraction": 0.25, **data},
    })


@pytest.fixture
def apart(tmp_path) -> tuple[Path, Path]:
    """``(images/, elsewhere/labels.csv)``: the CSV lists ``0.png`` … relative to ``images/``, not to itself."""
    images, elsewhere = tmp_path / "images", tmp_path / "elsewhere"
    images.mkdir()
    elsewhere.mkdir()
    for i in range(N):
        Image.fromarray(np.full((6, 6, 3), 30 * i, np.uint8)).save(images / f"{i}.png")
    csv = elsewhere / "labels.csv"
    pd.DataFrame({"image": [f"{i}.png" for i in range(N)], "shape": ["round", "square"] * (N // 2)}).to_csv(
        csv, index=False)
    return images, csv


def unknown(df):
    return MultiHeadTask(job()).unknown_labels(df)


@pytest.mark.parametrize("root", ["given", "relative"])
def test_relative_paths_resolve_against_the_image_root(apart, monkeypatch, root):
    images, csv = apart
    if root == "relative":  # a relative data.root is taken from the working folder, like every config path
        monkeypatch.chdir(images.parent)
        images_arg = Path("images")
    else:
        images_arg = images
    table = read_label_table(csv, "image", ["shape"], unknown, image_root=images_arg)
    assert table.rows["path"].tolist() == [str((images / f"{i}.png").resolve()) for i in range(N)]


def test_without_a_root_paths_resolve_against_the_csv_folder(apart):
    images, csv = apart
    (csv.parent / "0.png").write_bytes((images / "0.png").read_bytes())
    pd.DataFrame({"image": ["0.png"], "shape": ["round"]}).to_csv(csv, index=False)
    assert read_label_table(csv, "image", ["shape"], unknown).rows["path"].tolist() == [
        str((csv.parent / "0.png").resolve())]


def test_absolute_paths_are_used_as_they_are(apart, tmp_path):
    images, csv = apart
    pd.DataFrame({"image": [str(images / "3.png")], "shape": ["round"]}).to_csv(csv, index=False)
    table = read_label_table(csv, "image", ["shape"], unknown, image_root=tmp_path / "unrelated")
    assert table.rows["path"].tolist() == [str(images / "3.png")]


def test_file_not_found_shows_the_full_path_tried(apart):
    images, csv = apart
    with pytest.raises(BadRowsError) as err:  # images kept apart, no data.root: the CSV's folder is wrong
        read_label_table(csv, "image", ["shape"], unknown)
    msg = str(err.value)
    assert f"line 2: 0.png: file not found: {(csv.parent / '0.png').resolve()}" in msg
    assert f"resolved against {csv.parent.resolve()} (the CSV's folder; set data.root" in msg
    pd.DataFrame({"image": ["0.png", "gone.png"], "shape": ["round", "round"]}).to_csv(csv, index=False)
    with pytest.raises(BadRowsError, match=re.escape(f"line 3: gone.png: file not found: {images / 'gone.png'}")):
        read_label_table(csv, "image", ["shape"], unknown, image_root=images)


def test_training_split_reads_images_from_data_root(apart):
    images, csv = apart
    cfg = job(root=str(images), labels=str(csv))
    split = split_labels(cfg, MultiHeadTask(cfg), use_ray=False)
    assert split.labels_csv == csv.resolve() and len(split.train) + len(split.val) == N
    assert all(Path(p).parent == images.resolve() for p in pd.concat([split.train, split.val])["path"])


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = Normalisation()

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"shape": torch.zeros(len(inputs["image"]), 2)}



def test_evaluate_follows_the_same_rule(apart):
    images, csv = apart
    cfg = job(root=str(images), labels=str(csv))
    pred = Predictor(cfg, MultiHeadTask(cfg), Constant())
    report = evaluate(pred, progress=False)  # the model's data.*: validation split, images under data.root
    assert report.n_images == N // 4 and report.scored["image_root"] == str(images.resolve())
    report = evaluate(pred, csv, image_root=images, progress=False)  # an explicit CSV with its image folder
    assert report.n_images == N and {Path(p).parent for p in report.paths} == {images.resolve()}
