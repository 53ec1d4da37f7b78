"""Multi-head classification: conditional labels, masked loss, metrics vs sklearn, postprocessing."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_score, recall_score

from prism.tasks.multihead.config import MultiHeadTaskConfig
from prism.tasks.multihead.labels import IGNORE, encode_labels, unknown_labels
from prism.tasks.multihead.loss import multihead_loss
from prism.tasks.multihead.metrics import MultiHeadMetrics, scores_from_confusion

CIRCLE = ["circle_clear", "circle_resembles"]


@pytest.fixture
def cfg() -> MultiHeadTaskConfig:
    return MultiHeadTaskConfig.model_validate({
        "heads": [
            {"name": "presence", "classes": ["circle_clear", "circle_resembles", "no_circle"]},
            {"name": "closure", "classes": ["closed", "almost_closed"], "only_when": {"presence": CIRCLE}},
        ],
        "label_smoothing": 0.0,
    })


def test_encode_masks_conditional_heads(cfg):
    df = pd.DataFrame({
        "presence": ["circle_clear", "no_circle", "", "circle_resembles", "no_circle"],
        "closure": ["closed", "closed", "almost_closed", "", "na"],
    })
    y = encode_labels(cfg, df)
    assert y["y_presence"].tolist() == [0, 2, IGNORE, 1, 2]
    # no_circle → closure ignored even though the table says "closed"; missing parent → ignored
    assert y["y_closure"].tolist() == [0, IGNORE, IGNORE, IGNORE, IGNORE]


def test_unknown_labels_are_named(cfg):
    df = pd.DataFrame({"presence": ["circle_clear", "circel"], "closure": ["closed", "open"]})
    msgs = unknown_labels(cfg, df)
    assert msgs[0] == ""
    assert "presence='circel'" in msgs[1] and "closure='open'" in msgs[1]


def test_loss_ignores_masked_rows_and_na_is_never_a_class(cfg):
    torch.manual_seed(0)
    logits = {"presence": torch.randn(4, 3, requires_grad=True), "closure": torch.randn(4, 2, requires_grad=True)}
    targets = {"y_presence": torch.tensor([0, 2, 1, 2]), "y_closure": torch.tensor([1, IGNORE, 0, IGNORE])}
    loss, parts = multihead_loss(cfg, logits, targets)
    ref_p = torch.nn.functional.cross_entropy(logits["presence"], targets["y_presence"])
    ref_c = torch.nn.functional.cross_entropy(logits["closure"][[0, 2]], torch.tensor([1, 0]))
    assert loss.item() == pytest.approx((ref_p + ref_c).item(), rel=1e-6)
    loss.backward()
    # masked rows get no gradient on the conditional head
    assert torch.all(logits["closure"].grad[[1, 3]] == 0)


def test_loss_with_all_rows_masked_is_zero_not_nan(cfg):
    logits = {"presence": torch.randn(2, 3, requires_grad=True), "closure": torch.randn(2, 2, requires_grad=True)}
    targets = {"y_presence": torch.tensor([2, 2]), "y_closure": torch.tensor([IGNORE, IGNORE])}
    loss, parts = multihead_loss(cfg, logits, targets)
    assert torch.isfinite(loss) and parts["loss/closure"] == 0.0


def test_label_smoothing_and_class_weights_reach_the_loss():
    cfg = MultiHeadTaskConfig.model_validate({
        "heads": [{"name": "h", "classes": ["a", "b", "c"], "class_weights": [1.0, 2.0, 0.5]}],
        "label_smoothing": 0.1,
    })
    z = torch.randn(6, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    loss, _ = multihead_loss(cfg, {"h": z}, {"y_h": y})
    ref = torch.nn.functional.cross_entropy(z, y, weight=torch.tensor([1.0, 2.0, 0.5]), label_smoothing=0.1)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_agree_with_sklearn(cfg, seed):
    rng = np.random.default_rng(seed)
    acc = MultiHeadMetrics(cfg)
    all_true, all_pred = {"presence": [], "closure": []}, {"presence": [], "closure": []}
    losses = []
    halves = [MultiHeadMetrics(cfg), MultiHeadMetrics(cfg)]  # as two workers would see the batches
    for b in range(4):  # several batches
        n = 17
        yp = torch.from_numpy(rng.integers(0, 3, n))
        yc = torch.from_numpy(rng.integers(0, 2, n))
        yc[yp == 2] = IGNORE
        out = {"presence": torch.from_numpy(rng.dirichlet(np.ones(3), n)),
               "closure": torch.from_numpy(rng.dirichlet(np.ones(2), n))}  # probabilities, as predictions give
        acc.update(out, {"y_presence": yp, "y_closure": yc})
        halves[b % 2].update(out, {"y_presence": yp, "y_closure": yc})
        batch_loss = 0.0
        for h, y in (("presence", yp), ("closure", yc)):
            keep = y != IGNORE
            all_true[h] += y[keep].tolist()
            all_pred[h] += out[h].argmax(-1)[keep].tolist()
            if keep.any():  # the loss of the predictions: cross-entropy of the probabilities, summed over heads
                batch_loss += log_loss(y[keep].numpy(), out[h][keep].numpy(), labels=list(range(out[h].shape[1])))
        losses.append(batch_loss)
    m = acc.compute("val/")
    for h, k in (("presence", 3), ("closure", 2)):
        t, p = all_true[h], all_pred[h]
        labels = list(range(k))
        assert m[f"val/{h}/accuracy"] == pytest.approx(accuracy_score(t, p))
        assert m[f"val/{h}/macro_f1"] == pytest.approx(f1_score(t, p, labels=labels, average="macro", zero_division=0))
        prec = precision_score(t, p, labels=labels, average=None, zero_division=0)
        rec = recall_score(t, p, labels=labels, average=None, zero_division=0)
        classes = cfg.heads[0 if h == "presence" else 1].classes
        for i, c in enumerate(classes):
            assert m[f"val/{h}/precision/{c}"] == pytest.approx(prec[i])
            assert m[f"val/{h}/recall/{c}"] == pytest.approx(rec[i])
    assert m["val/loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    merged = MultiHeadMetrics(cfg)  # gather-and-merge: the two workers' states merged give the whole
    for half in halves:
        merged.merge(half.state())
    assert merged.compute("val/") == pytest.approx(m)


def test_scores_handle_absent_classes_like_sklearn():
    t, p = [0, 0, 1, 1], [0, 0, 0, 1]  # class 2 never appears
    cm = np.zeros((3, 3), dtype=int)
    for a, b in zip(t, p, strict=True):
        cm[a, b] += 1
    s = scores_from_confusion(cm)
    assert s["macro_f1"] == pytest.approx(f1_score(t, p, labels=[0, 1, 2], average="macro", zero_division=0))


def test_postprocess_outputs_na_where_condition_fails(cfg):
    from prism.config import JobConfig
    from prism.tasks.multihead.task import MultiHeadTask

    job = JobConfig.model_validate({"task": cfg.model_dump(), "stages": [{"kind": "probe", "epochs": 1, "lr": {"head": 1e-3}}]})
    task = MultiHeadTask(job)
    probs = {"presence": torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]]),
             "closure": torch.tensor([[0.3, 0.7], [0.9, 0.1]])}
    opts = task.parse_options(None)
    r = [task.postprocess({k: v[i] for k, v in probs.items()}, {}, opts) for i in range(2)]
    assert r[0]["presence"]["prediction"] == "circle_clear"
    assert r[0]["closure"]["prediction"] == "almost_closed"
    assert r[1]["presence"]["prediction"] == "no_circle"
    assert r[1]["closure"]["prediction"] == "na"
    assert r[1]["closure"]["probabilities"] == {"closed": pytest.approx(0.9), "almost_closed": pytest.approx(0.1)}
    frame = task.results_frame([{"image": "a.png", **r[0]}, {"image": "b.png", **r[1]}])
    assert list(frame.columns) == ["image", "presence", "presence_prob_circle_clear", "presence_prob_circle_resembles",
                                   "presence_prob_no_circle", "closure", "closure_prob_closed",
                                   "closure_prob_almost_closed"]
    assert frame["closure"].tolist() == ["almost_closed", "na"]
