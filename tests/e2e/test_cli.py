"""The ``prism`` command line end to end: config, synth, train, predict, evaluate, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import accuracy_score

from tests.e2e.conftest import run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FAST = ["data.synthetic.n=90", "backbone.img_size=64", "tracking.experiment=cli",
        "stages=[{kind: probe, epochs: 1, lr: {head: 1e-3}}, {kind: lora, epochs: 1, lr: {head: 1e-3, lora: 1e-3}}]"]


def test_help_teaches():
    out = run(["prism", "--help"], cwd=".")
    assert out.returncode == 0
    for word in ("train", "predict", "evaluate", "config", "ray job submit"):
        assert word in out.stdout
    out = run(["prism", "train", "--help"], cwd=".")
    assert "KEY=VALUE" in out.stdout


def test_config_prints_resolved_and_rejects_typos(project):
    out = run(["prism", "config", "jobs/circles.yaml", "lora.rank=4"], cwd=project)
    assert out.returncode == 0 and "rank: 4" in out.stdout
    bad = run(["prism", "config", "jobs/circles.yaml", "trian.num_workers=2"], cwd=project)
    assert bad.returncode == 2
    assert "trian: unknown key (did you mean 'train'?)" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.fixture(scope="module")
def synth12(project):
    out = run(["prism", "data", "synth", "circles", "--n", "12", "--out", "synth12", "--seed", "3"], cwd=project)
    assert out.returncode == 0, out.stderr
    return project / "synth12"


def test_synth_writes_images_and_labels(synth12):
    df = pd.read_csv(synth12 / "labels.csv", dtype=str, keep_default_na=False)
    assert list(df.columns) == ["image", "presence", "closure", "circularity"] and len(df) == 12
    assert all((synth12 / p).is_file() for p in df["image"])


def test_train_predict_evaluate(project, synth12):
    out = run(["prism", "train", "jobs/circles.yaml", *FAST], cwd=project)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "[prism] epoch   1/2 [probe]" in text and "[prism] epoch   2/2 [lora]" in text
    assert "registered models:/circles/1" in text and "mlflow ui --backend-store-uri sqlite:///" in text
    assert (project / "mlflow.db").is_file()
    # a clean console: Ray Train's per-report lines and Ray Data's execution plans stay in Ray's log files
    for noise in ("Reporting training result", "Checkpoint successfully created", "Execution plan of Dataset"):
        assert noise not in text, noise

    pred = run(["prism", "predict", "--model", "models:/circles@champion", "synth12", "--out", "preds.csv"],
               cwd=project)
    assert pred.returncode == 0, pred.stderr[-3000:]
    df = pd.read_csv(project / "preds.csv", keep_default_na=False)
    assert len(df) == 12 and {"image", "presence", "presence_prob_no_circle", "closure"} <= set(df.columns)
    probs = df[["presence_prob_circle_clear", "presence_prob_circle_resembles", "presence_prob_no_circle"]]
    assert ((probs.sum(axis=1) - 1).abs() < 1e-4).all()

    pred = run(["prism", "predict", "--model", "models:/circles@champion", "synth12/images/00000.png",
                "--out", "one.json", "--no-tta"], cwd=project)
    assert pred.returncode == 0, pred.stderr[-3000:]
    res = json.loads((project / "one.json").read_text())
    assert res[0]["image"].endswith("00000.png")
    assert set(res[0]["presence"]) == {"prediction", "probabilities"}

    ev = run(["prism", "evaluate", "--model", "models:/circles@champion", "--labels", "synth12/labels.csv",
              "--out", "eval"], cwd=project)
    assert ev.returncode == 0, ev.stderr[-3000:]
    metrics = json.loads((project / "eval" / "metrics.json").read_text())
    assert metrics["n_images"] == 12
    # evaluate scores what predict answers (both with TTA): sklearn on preds.csv gives the same accuracy
    truth = pd.read_csv(synth12 / "labels.csv", dtype=str, keep_default_na=False)
    by_name = dict(zip(df["image"].map(lambda p: Path(p).name), df["presence"], strict=True))
    expected = accuracy_score(truth["presence"], [by_name[Path(p).name] for p in truth["image"]])
    assert metrics["metrics"]["presence/accuracy"] == pytest.approx(expected)
    assert (project / "eval" / "confusion" / "presence.png").is_file()


def test_train_on_bad_data_names_the_row(project):
    data = project / "bad"
    run(["prism", "data", "synth", "circles", "--n", "20", "--out", str(data)], cwd=project)
    labels = pd.read_csv(data / "labels.csv", dtype=str, keep_default_na=False)
    labels.loc[3, "image"] = "images/nope.png"
    labels.loc[5, "presence"] = "squircle"
    labels.to_csv(data / "labels.csv", index=False)
    out = run(["prism", "train", "jobs/circles.yaml", *FAST, f"data.root={data}"], cwd=project)
    assert out.returncode == 2
    assert "line 5: images/nope.png: file not found" in out.stderr
    assert "presence='squircle'" in out.stderr
    assert "Traceback" not in out.stderr
