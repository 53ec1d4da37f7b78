"""The classify task: config, labels, heads, loss, metrics (against scikit-learn), postprocess, reports."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    top_k_accuracy_score,
)

from prism.config import ConfigError, JobConfig, load_config
from prism.engine.model import build_model
from prism.tasks.classify.metrics import most_confused
from prism.tasks.classify.task import ClassifyOptions, ClassifyTask

K = 12


def job(**task) -> dict:
    raw = ClassifyTask.example_job()
    raw["task"] = {"name": "classify", "classes": [f"c{i}" for i in range(K)], **task}
    return raw


def make_task(**task) -> ClassifyTask:
    return ClassifyTask(JobConfig.model_validate(job(**task)))


# ------------------------------------------------------------------------------------------------ config
def test_classes_file_is_read_and_the_resolved_config_needs_no_file(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# QuickDraw-style class list\ncat\n\ndog\nhouse\n")
    raw = job()
    raw["task"] = {"name": "classify", "classes_file": str(path)}
    cfg = JobConfig.model_validate(raw)
    assert cfg.task.classes == ["cat", "dog", "house"]
    dumped = cfg.model_dump(mode="json")
    path.unlink()
    assert JobConfig.model_validate(dumped).task.classes == ["cat", "dog", "house"]


@pytest.mark.parametrize(("task", "message"), [
    ({"classes": None}, "give classes (a list) or classes_file"),
    ({"classes": ["a"]}, "at least 2 classes"),
    ({"classes": ["a", "b", "a"]}, "repeated: ['a']"),
    ({"class_weights": {"nope": 2.0}}, "class_weights names unknown classes ['nope']"),
    ({"class_weights": {"c0": 0.0}}, "class_weights must be positive"),
    ({"classes_file": "missing.txt", "classes": None}, "class-list file not found: missing.txt"),
    ({"head": {"hidden": [0]}}, "hidden sizes must be >= 1"),
])
def test_bad_task_configs_fail_naming_the_problem(task, message):
    with pytest.raises(ConfigError, match="task") as err:
        load_config(raw=job(**task))
    assert message in str(err.value)


def test_defaults_follow_the_task():
    cfg = JobConfig.model_validate(job())
    assert (cfg.train.metric, cfg.train.mode, cfg.data.synthetic.generator) == ("val/top1", "max", "sketches")
    assert cfg.task.synthetic_options() == {"classes": cfg.task.classes}


# ------------------------------------------------------------------------------------------------ labels
def test_label_hooks_encode_and_name_bad_labels():
    task = make_task()
    df = pd.DataFrame({"label": ["c3", " c0 ", "zebra", ""]})
    msgs = task.unknown_labels(df).tolist()
    assert msgs[:2] == ["", ""] and "label 'zebra' is not one of 12 classes" in msgs[2] and msgs[3] == "missing label"
    assert task.encode_labels(df.iloc[:2])["y_label"].tolist() == [3, 0]


# ------------------------------------------------------------------------------------------------ model, loss
def test_mlp_head_shapes_and_embedding():
    task = make_task(head={"hidden": [32, 16], "pooling": "cls+mean", "dropout": 0.1})
    torch.manual_seed(0)
    model = build_model(task.cfg, task).eval()
    x = torch.randn(3, 3, 28, 28)
    out = model({"image": x})
    assert out["logits"].shape == (3, K) and out["embedding"].shape == (3, 16)
    linears = [m for m in model.heads.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2 * model.backbone.embed_dim, 32), (32, 16), (16, K)]
    preds = task.predictions(model, {"image": x}, tta=False)
    assert torch.allclose(preds["probs"], out["logits"].softmax(-1), atol=1e-6)
    assert torch.allclose(preds["probs"].sum(-1), torch.ones(3))


def test_loss_applies_class_weights_and_label_smoothing():
    task = make_task(class_weights={"c1": 3.0}, label_smoothing=0.2)
    logits = torch.randn(8, K, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 1, 2, 3, 1, 4, 5])
    loss, parts = task.loss({"logits": logits}, {"y_label": y})
    # written out: smoothed targets q = (1 - eps) onehot + eps / K, weighted by w[y], normalised by sum of w[y]
    w = torch.ones(K)
    w[1] = 3.0
    q = F.one_hot(y, K) * 0.8 + 0.2 / K
    per_row = -(q * w * logits.log_softmax(-1)).sum(-1)
    expected = per_row.sum() / w[y].sum()
    assert torch.allclose(loss, expected, atol=1e-5) and parts["loss/ce"] == pytest.approx(float(expected), abs=1e-5)


# ------------------------------------------------------------------------------------------------ metrics
def test_metrics_equal_sklearn_and_merge_across_workers():
    task = make_task()
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, K - 1, n)  # the last class never occurs: it still counts in sklearn's macro F1
    logits = rng.normal(size=(n, K)) + 2.5 * np.eye(K)[y] * (rng.random(n) < 0.6)[:, None]
    probs = torch.tensor(logits).softmax(-1).float()
    whole, halves = task.metrics(), [task.metrics(), task.metrics()]
    for i, idx in enumerate(np.array_split(np.arange(n), 6)):
        batch = {"probs": probs[idx]}, {"y_label": torch.tensor(y[idx])}
        whole.update(*batch)
        halves[i % 2].update(*batch)
    halves[0].merge(halves[1].state())
    got = whole.compute()
    assert halves[0].compute() == pytest.approx(got)

    p = probs.double().numpy()
    p /= p.sum(1, keepdims=True)
    pred = p.argmax(1)
    labels = list(range(K))
    assert got["val/top1"] == pytest.approx(accuracy_score(y, pred))
    assert got["val/top5"] == pytest.approx(top_k_accuracy_score(y, p, k=5, labels=labels))
    assert got["val/macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", labels=labels, zero_division=0))
    assert got["val/loss"] == pytest.approx(log_loss(y, p, labels=labels), rel=1e-4)
    recall = recall_score(y, pred, average=None, labels=labels[:-1], zero_division=0)
    assert got["val/mean_class_accuracy"] == pytest.approx(recall.mean())

    stats = whole.export()
    table = task.tables(stats)["per_class.csv"]
    assert table["class"].tolist() == task.classes and table["support"].sum() == n
    np.testing.assert_allclose(table["recall"].to_numpy()[:-1], recall)
    assert np.isnan(table["accuracy"].iloc[-1])  # no images of the last class: accuracy undefined
    np.testing.assert_allclose(table["precision"], precision_score(y, pred, average=None, labels=labels,
                                                                   zero_division=0))
    np.testing.assert_allclose(table["f1"], f1_score(y, pred, average=None, labels=labels, zero_division=0))
    assert np.asarray(stats["confusion"]).sum() == n  # K <= 30: the whole matrix is exported


def test_most_confused_pairs_are_the_largest_off_diagonal_cells():
    rng = np.random.default_rng(1)
    cm = rng.integers(0, 20, (9, 9))
    pairs = most_confused(cm, n=6)
    off = [(int(cm[i, j]), -(i * 9 + j), i, j) for i in range(9) for j in range(9) if i != j and cm[i, j] > 0]
    expected = [[i, j, c] for c, _, i, j in sorted(off, reverse=True)[:6]]
    assert pairs == expected
    assert most_confused(np.diag([3, 4])) == []


def test_thousand_classes_export_small_and_draw_fast():
    task = make_task(classes=[f"class_{i:04d}" for i in range(1000)])
    acc = task.metrics()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 1000, 4000)
    probs = torch.rand(4000, 1000)
    probs[torch.arange(4000), torch.tensor(y)] += 0.5 * (torch.rand(4000) < 0.5)
    acc.update({"probs": probs}, {"y_label": torch.tensor(y)})
    stats = acc.export()
    assert "confusion" not in stats and len(stats["confused"]) == 25 and len(stats["support"]) == 1000
    start = time.perf_counter()
    figs = task.figures(stats)
    for fig in figs.values():
        fig.canvas.draw()
    elapsed = time.perf_counter() - start
    assert sorted(figs) == ["class_accuracy.png", "confused_pairs.png"]
    assert elapsed < 10, f"drawing the K=1000 figures took {elapsed:.1f}s"  # a K x K image takes minutes


# ------------------------------------------------------------------------------------------------ results
def test_postprocess_ranks_top_k_capped_at_k():
    task = make_task(top_k=3)
    probs = torch.tensor([0.05, 0.5, 0.1, 0.2, *([0.15 / 8] * 8)])
    out = task.postprocess({"probs": probs}, {}, task.parse_options({}))
    assert out["prediction"] == "c1" and out["probability"] == pytest.approx(0.5)
    assert [e["class"] for e in out["top_k"]] == ["c1", "c3", "c2"]
    many = task.postprocess({"probs": probs}, {}, ClassifyOptions(top_k=50))
    assert len(many["top_k"]) == K
    frame = task.results_frame([{**out, "image": "a.png"}])
    assert frame.columns.tolist() == ["image", "prediction", "probability", "top2", "top2_probability", "top3",
                                      "top3_probability"]
    with pytest.raises(ValueError, match="top_k"):
        task.parse_options({"top_k": 0})
