"""The segmentation accumulator against scikit-learn on the non-void pixels: pooled and per-image metrics,
two workers' states merged = one pass, the threshold, low-resolution logits, empty masks, the exported rows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_score, recall_score

from prism.engine.metrics import sum_states
from prism.tasks.segment.metrics import IGNORE_INDEX, METRICS, SegmentationMetrics

H, W = 12, 17


def sklearn_metrics(y_true: np.ndarray, y_pred: np.ndarray, zero_division: float = 0.0) -> dict[str, float]:
    """The reference: scikit-learn's binary metrics of flattened labels (1 = object)."""
    kw = {"zero_division": zero_division}
    f1 = f1_score(y_true, y_pred, **kw)
    return {"iou": jaccard_score(y_true, y_pred, **kw), "dice": f1, "accuracy": accuracy_score(y_true, y_pred),
            "precision": precision_score(y_true, y_pred, **kw), "recall": recall_score(y_true, y_pred, **kw),
            "f1": f1}


def per_image_reference(logits: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> list[dict]:
    """scikit-learn per image on its non-void pixels; 0/0 = 1 when prediction and target are both empty."""
    out = []
    for lg, m in zip(logits, mask, strict=True):
        valid = m != IGNORE_INDEX
        y_true = m[valid].numpy().astype(np.int64)
        y_pred = (lg.sigmoid() >= threshold)[valid].numpy().astype(np.int64)
        if not len(y_true):
            out.append(None)
            continue
        both_empty = not y_true.any() and not y_pred.any()
        out.append(sklearn_metrics(y_true, y_pred, zero_division=1.0 if both_empty else 0.0))
    return out


def random_batch(n: int, seed: int, size: tuple[int, int] = (H, W)) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` logits and uint8 masks with ~15 % void, including an empty target and an empty prediction."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(n, H, W, generator=g) < 0.4).to(torch.uint8)
    mask[torch.rand(n, H, W, generator=g) < 0.15] = IGNORE_INDEX
    logits = torch.randn(n, *size, generator=g) * 2 - 0.3
    mask[0][mask[0] == 1] = 0  # no object in the first image
    logits[-1] = -20.0  # nothing predicted in the last one
    return logits, mask


def batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [random_batch(n, seed + i) for i, n in enumerate((3, 4, 2, 5))]


def run(acc: SegmentationMetrics, data) -> SegmentationMetrics:
    for logits, mask in data:
        acc.update({"masks": logits}, {"mask": mask})
    return acc


def test_pooled_metrics_are_sklearns_on_the_non_void_pixels():
    data = batches()
    got = run(SegmentationMetrics(), data).compute()
    mask = torch.cat([m for _, m in data]).flatten()
    pred = torch.cat([(lg.sigmoid() >= 0.5) for lg, _ in data]).flatten()
    valid = mask != IGNORE_INDEX
    ref = sklearn_metrics(mask[valid].numpy().astype(np.int64), pred[valid].numpy().astype(np.int64))
    for m in METRICS:
        assert got[f"val/{m}"] == pytest.approx(ref[m], abs=1e-12), m


def test_image_means_are_the_mean_of_sklearn_per_image():
    data = batches(seed=3)
    got = run(SegmentationMetrics(), data).compute(prefix="test/")
    rows = [r for lg, m in data for r in per_image_reference(lg, m)]
    for m in METRICS:
        assert got[f"test/image/{m}"] == pytest.approx(np.mean([r[m] for r in rows]), abs=1e-12), m


def test_state_is_float64_or_int64_tensors_that_sum_states_takes():
    state = run(SegmentationMetrics(), batches()).state()
    assert all(isinstance(v, torch.Tensor) and v.dtype in (torch.float64, torch.int64) for v in state.values())
    acc = SegmentationMetrics()
    acc.merge(sum_states(state))
    assert acc.compute() == run(SegmentationMetrics(), batches()).compute()


def test_two_workers_merged_equal_one_pass():
    data = batches(seed=7)
    whole = run(SegmentationMetrics(), data)
    workers = [run(SegmentationMetrics(), data[0::2]), run(SegmentationMetrics(), data[1::2])]
    merged = SegmentationMetrics()
    for w in workers:
        merged.merge(w.state())
    assert merged.counts() == whole.counts()
    assert int(merged.state()["images"]) == sum(len(m) for _, m in data)
    one, two = whole.compute(), merged.compute()
    for k in one:
        assert two[k] == pytest.approx(one[k], abs=1e-12), k


def test_merge_rejects_a_state_with_other_keys():
    acc = SegmentationMetrics()
    state = acc.state()
    with pytest.raises(ValueError, match=r"missing \['tp'\]"):
        acc.merge({k: v for k, v in state.items() if k != "tp"})
    with pytest.raises(ValueError, match=r"unexpected \['cm'\]"):
        acc.merge({**state, "cm": torch.zeros(())})


@pytest.mark.parametrize(("threshold", "foreground"), [
    (0.05, [True, True, True, True]),
    (0.3, [False, True, True, True]),
    (0.5, [False, False, True, True]),  # sigmoid(0) = 0.5 is foreground (>=)
    (0.9, [False, False, False, True]),
])
def test_threshold_sets_which_pixels_are_foreground(threshold, foreground):
    probs = torch.tensor([0.1, 0.4, 0.5, 0.95], dtype=torch.float64)
    logits = torch.logit(probs).float().view(1, 1, 4)
    mask = torch.tensor([[[0, 1, 0, 1]]], dtype=torch.uint8)
    acc = SegmentationMetrics(threshold=threshold)
    acc.update({"masks": logits}, {"mask": mask})
    fg = torch.tensor(foreground)
    obj = mask[0, 0] == 1
    assert acc.counts() == {"tp": int((fg & obj).sum()), "fp": int((fg & ~obj).sum()),
                            "fn": int((~fg & obj).sum()), "tn": int((~fg & ~obj).sum())}


def test_a_higher_threshold_predicts_less():
    data = batches(seed=11)
    low, high = run(SegmentationMetrics(threshold=0.3), data), run(SegmentationMetrics(threshold=0.8), data)
    predicted = {k: a.counts()["tp"] + a.counts()["fp"] for k, a in (("low", low), ("high", high))}
    assert predicted["high"] < predicted["low"]
    assert high.compute()["val/recall"] < low.compute()["val/recall"]


def test_low_resolution_logits_are_resized_bilinearly_to_the_target():
    logits, mask = random_batch(4, seed=5, size=(H // 2 + 1, W // 3))
    small = run(SegmentationMetrics(keep_images=4), [(logits, mask)])
    full = F.interpolate(logits[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    ref = run(SegmentationMetrics(keep_images=4), [(full, mask)])
    assert small.counts() == ref.counts()
    assert small.compute() == ref.compute()
    assert small.export() == ref.export()


def test_a_coarse_blob_upsampled_covers_its_pixels():
    logits = torch.tensor([[[8.0, -8.0], [-8.0, -8.0]]])
    mask = torch.zeros(1, 4, 4, dtype=torch.uint8)
    mask[0, :2, :2] = 1
    acc = SegmentationMetrics()
    acc.update({"masks": logits}, {"mask": mask})
    assert acc.counts() == {"tp": 4, "fp": 0, "fn": 0, "tn": 12}


OBJECT = [[1, 1, 0], [0, 0, 0]]
NOTHING = [[0, 0, 0], [0, 0, 0]]


@pytest.mark.parametrize(("name", "target", "predicted", "expected"), [
    ("both empty", NOTHING, NOTHING,
     {"iou": 1, "dice": 1, "accuracy": 1, "precision": 1, "recall": 1, "f1": 1}),
    ("object missed", OBJECT, NOTHING,
     {"iou": 0, "dice": 0, "accuracy": 4 / 6, "precision": 0, "recall": 0, "f1": 0}),
    ("object on an empty target", NOTHING, OBJECT,
     {"iou": 0, "dice": 0, "accuracy": 4 / 6, "precision": 0, "recall": 0, "f1": 0}),
    ("exact", OBJECT, OBJECT,
     {"iou": 1, "dice": 1, "accuracy": 1, "precision": 1, "recall": 1, "f1": 1}),
    ("half found", OBJECT, [[1, 0, 0], [0, 0, 0]],
     {"iou": 0.5, "dice": 2 / 3, "accuracy": 5 / 6, "precision": 1, "recall": 0.5, "f1": 2 / 3}),
])
def test_empty_masks_follow_the_documented_conventions(name, target, predicted, expected):
    mask = torch.tensor([target], dtype=torch.uint8)
    logits = torch.where(torch.tensor([predicted]) > 0, 10.0, -10.0)
    acc = SegmentationMetrics(keep_images=1)
    acc.update({"masks": logits}, {"mask": mask})
    got = acc.compute()
    ref = per_image_reference(logits, mask)[0]
    for m, v in expected.items():
        assert got[f"val/{m}"] == pytest.approx(v, abs=1e-12), (name, m)
        assert got[f"val/image/{m}"] == pytest.approx(v, abs=1e-12), (name, m)
        assert ref[m] == pytest.approx(v, abs=1e-12), (name, m)


def test_void_pixels_are_in_no_count_and_an_all_void_image_in_no_mean():
    mask = torch.tensor([[[1, IGNORE_INDEX], [0, IGNORE_INDEX]],
                         [[IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX]]], dtype=torch.uint8)
    logits = torch.full((2, 2, 2), 10.0)  # everything predicted, void included
    acc = SegmentationMetrics(keep_images=2)
    acc.update({"masks": logits}, {"mask": mask, "id": ["a", "b"]})
    assert acc.counts() == {"tp": 1, "fp": 1, "fn": 0, "tn": 0}
    assert int(acc.state()["images"]) == 1
    assert acc.compute()["val/image/precision"] == pytest.approx(0.5)
    empty_row = acc.export()["per_image"][1]
    assert empty_row["pixels"] == 0 and all(empty_row[m] is None for m in METRICS)


def test_nothing_seen_is_nan():
    got = SegmentationMetrics().compute()
    assert set(got) == {f"val/{m}" for m in METRICS} | {f"val/image/{m}" for m in METRICS}
    assert all(math.isnan(v) for v in got.values())
    acc = SegmentationMetrics()
    acc.update({"masks": torch.zeros(0, H, W)}, {"mask": torch.zeros(0, H, W, dtype=torch.uint8)})
    assert all(math.isnan(v) for v in acc.compute().values())


def test_export_keeps_the_first_rows_with_ids_and_prompts():
    data = batches(seed=2)[:2]  # 3 + 4 images
    acc = SegmentationMetrics(keep_images=5)
    for b, (logits, mask) in enumerate(data):
        n = len(mask)
        acc.update({"masks": logits}, {"mask": mask, "id": [f"img{b}-{i}" for i in range(n)],
                                       "prompt": [f"thing {i}" for i in range(n)]})
    stats = json.loads(json.dumps(acc.export()))
    assert stats["counts"] == acc.counts() and stats["images"] == 7 and stats["threshold"] == 0.5
    rows = stats["per_image"]
    assert [r["id"] for r in rows] == ["img0-0", "img0-1", "img0-2", "img1-0", "img1-1"]
    assert [r["prompt"] for r in rows] == ["thing 0", "thing 1", "thing 2", "thing 0", "thing 1"]
    refs = [r for lg, m in data for r in per_image_reference(lg, m)][:5]
    masks = torch.cat([m for _, m in data])[:5]
    for row, ref, m in zip(rows, refs, masks, strict=True):
        assert row["pixels"] == int((m != IGNORE_INDEX).sum())
        for name in METRICS:
            assert row[name] == pytest.approx(ref[name], abs=1e-12)
    table = acc.per_image_table()
    assert list(table.columns) == ["id", "prompt", *METRICS, "pixels"]
    assert len(table) == 5 and table["id"].tolist() == [r["id"] for r in rows]
    np.testing.assert_allclose(table["iou"].to_numpy(), [r["iou"] for r in rows], atol=1e-12)


def test_no_rows_kept_by_default_and_rows_are_not_merged():
    acc = run(SegmentationMetrics(), batches())
    assert acc.export()["per_image"] == [] and list(acc.per_image_table().columns)[:2] == ["id", "prompt"]
    kept = run(SegmentationMetrics(keep_images=2), batches())
    merged = SegmentationMetrics(keep_images=2)
    merged.merge(kept.state())
    assert merged.export()["per_image"] == [] and merged.counts() == kept.counts()
    rows = kept.export()["per_image"]
    assert len(rows) == 2 and rows[0]["id"] is None and rows[0]["prompt"] is None


@pytest.mark.parametrize(("kwargs", "predictions", "targets", "match"), [
    ({"threshold": 1.5}, None, None, "threshold must be a probability"),
    ({"keep_images": -1}, None, None, "keep_images must be >= 0"),
    ({}, torch.zeros(2, 3, 3), torch.full((2, 3, 3), 7, dtype=torch.uint8), r"found \[7\]"),
    ({}, torch.zeros(2, 3, 3), torch.zeros(3, 3, 3, dtype=torch.uint8), "must be"),
    ({}, torch.zeros(3, 3), torch.zeros(3, 3, dtype=torch.uint8), "must be"),
])
def test_bad_input_is_a_value_error(kwargs, predictions, targets, match):
    with pytest.raises(ValueError, match=match):
        SegmentationMetrics(**kwargs).update({"masks": predictions}, {"mask": targets})


def test_ids_of_another_length_are_a_value_error():
    logits, mask = random_batch(3, seed=0)
    with pytest.raises(ValueError, match=r"one string per image \(3\)"):
        SegmentationMetrics(keep_images=3).update({"masks": logits}, {"mask": mask, "id": ["a"]})
