"""``prism evaluate`` without ``--labels`` scores the validation split of the training data, never a training row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from prism.config import JobConfig
from prism.data.datasets import split_labels, split_table
from prism.inference.evaluate import evaluate
from prism.inference.predictor import Predictor
from prism.tasks.multihead.task import MultiHeadTask
from tests.helpers.models import Normalisation

SIZE = 14
N = 20



class TinyClassifier(nn.Module):
    """``{"image": (B, 3, S, S)}`` → ``{"shape": (B, 2)}``: one linear layer over the flattened pixels."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * SIZE * SIZE, 2)
        self.backbone = Normalisation()

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"shape": self.fc(inputs["image"].flatten(1))}


def job(csv: Path, **data) -> JobConfig:
    return JobConfig.model_validate({
        "task": {"name": "multihead", "heads": [{"name": "shape", "classes": ["round", "square"]}], "tta": []},
        "stages": [{"kind": "probe", "epochs": 1, "lr": {"head": 1e-3}}],
        "backbone": {"name": "dinov2_tiny", "img_size": SIZE},
        "data": {"labels": str(csv), "val_fraction": 0.25, "split_seed": 3, **data},
    })


def predictor(cfg: JobConfig) -> Predictor:
    torch.manual_seed(0)
    return Predictor(cfg, MultiHeadTask(cfg), TinyClassifier())


@pytest.fixture
def dataset(tmp_path) -> Path:
    """``N`` small PNGs under ``images/`` and ``labels.csv`` next to them (half round, half square)."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(N):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
        rows.append((f"images/{i}.png", "round" if i % 2 else "square"))
    csv = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=["image", "shape"]).to_csv(csv, index=False)
    return csv


def expected_split(csv: Path, cfg: JobConfig, drop: tuple[str, ...] = ()) -> tuple[set[str], set[str]]:
    """Independent of prism's reading: the raw CSV split as the integration test of training does it."""
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    df = df[~df["image"].isin(drop)].reset_index(drop=True)
    train, val = split_table(df, df["shape"].to_numpy(), cfg.data.val_fraction, cfg.data.split_seed)
    absolute = lambda frame: {str((csv.parent / p).resolve()) for p in frame["image"]}  # noqa: E731
    return absolute(train), absolute(val)


def test_evaluate_without_labels_scores_only_the_validation_split(dataset):
    cfg = job(dataset)
    report = evaluate(predictor(cfg), progress=False)
    train, val = expected_split(dataset, cfg)
    assert len(val) == N // 4 and not train & val
    assert set(report.paths) == val and len(report.paths) == report.n_images == N // 4
    assert report.scored["rows"] == "validation split"
    assert report.scored["fingerprint"] == split_labels(cfg, MultiHeadTask(cfg), use_ray=False).val_fingerprint
    assert report.describe().startswith(f"validation split: {N // 4} images of {dataset.resolve()}")


def test_evaluate_with_labels_scores_every_row(dataset):
    cfg = job(dataset)
    report = evaluate(predictor(cfg), dataset, progress=False)
    assert report.n_images == N and report.scored["rows"] == "all rows"
    assert set(report.paths) == set.union(*expected_split(dataset, cfg))


def test_validation_split_drops_undecodable_rows_before_splitting_as_training_does(dataset):
    # training (data.check_images, on_bad_rows=skip) drops undecodable files, THEN splits: so must evaluate
    (dataset.parent / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    df = pd.read_csv(dataset)
    pd.concat([df, pd.DataFrame([["images/broken.png", "round"]], columns=df.columns)]).to_csv(dataset, index=False)
    cfg = job(dataset, on_bad_rows="skip")
    report = evaluate(predictor(cfg), progress=False)
    _, val = expected_split(dataset, cfg, drop=("images/broken.png",))
    assert set(report.paths) == val and report.skipped == 1


def test_validation_split_refuses_options_that_only_apply_to_a_labels_csv(dataset):
    with pytest.raises(ValueError, match=r"\['on_bad_rows'\] only apply with labels_csv"):
        evaluate(predictor(job(dataset)), on_bad_rows="skip", progress=False)


def test_cli_evaluate_default_is_the_validation_split(dataset, tmp_path, monkeypatch, capsys):
    import prism.inference.predictor
    from prism.cli import main

    cfg = job(dataset)
    monkeypatch.setattr(prism.inference.predictor, "load_predictor", lambda source, device=None: predictor(cfg))
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", "models:/tiny@champion", "--out", str(out)]) == 0
    saved = json.loads((out / "metrics.json").read_text())
    _, val = expected_split(dataset, cfg)
    assert saved["n_images"] == len(val) == N // 4
    assert saved["scored"]["rows"] == "validation split" and saved["scored"]["split_seed"] == 3
    assert f"validation split: {N // 4} images" in capsys.readouterr().out
    assert main(["evaluate", "--model", "m", "--root", str(tmp_path), "--out", str(out)]) == 2  # --root needs --labels


def test_evaluate_refuses_when_the_data_changed_since_training(dataset, tmp_path):
    """The bundle records the fingerprint of the split it was scored on; another split is refused."""
    cfg = job(dataset)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    recorded = split_labels(cfg, MultiHeadTask(cfg), use_ray=False).val_fingerprint
    (bundle / "metrics.json").write_text(json.dumps({"metrics": {}, "val_fingerprint": recorded}))
    pred = predictor(cfg)
    pred.source = str(bundle)
    assert evaluate(pred, progress=False).scored["fingerprint"] == recorded  # unchanged data: scored
    labels = pd.read_csv(dataset)
    labels.iloc[:-2].to_csv(dataset, index=False)  # two rows gone: sklearn re-splits everything
    with pytest.raises(ValueError, match="not the one the model was scored on"):
        evaluate(pred, progress=False)
