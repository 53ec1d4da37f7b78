"""The demo's held-out summary: accuracy per head where the head is defined, against the majority class."""

from __future__ import annotations

import pandas as pd
from sklearn.metrics import accuracy_score

from prism.cli.demo import held_out_report
from prism.config import load_config
from tests.conftest import CIRCLES_JOB


def _result(presence: str, closure: str) -> dict:
    return {"presence": {"prediction": presence}, "closure": {"prediction": closure},
            "circularity": {"prediction": "na" if presence == "no_circle" else "circular"}}


def test_accuracy_counts_defined_rows_and_na_as_wrong():
    cfg = load_config(CIRCLES_JOB)
    # presence: circle_clear=0, circle_resembles=1, no_circle=2; closure: closed=0, almost_closed=1, -1 = na
    val = pd.DataFrame({"path": list("abcd"), "y_presence": [0, 1, 2, 2], "y_closure": [0, 1, -1, -1],
                        "y_circularity": [0, 0, -1, -1]})
    results = [_result("circle_clear", "closed"), _result("no_circle", "na"),   # closure answered na: wrong
               _result("no_circle", "na"), _result("circle_clear", "closed")]
    lines = held_out_report(cfg, val, results)
    presence, closure, circularity = lines
    expected = accuracy_score([0, 1, 2, 2], [0, 2, 2, 0])
    assert f"accuracy {expected:.3f} on 4 images" in presence and "chance, always the commonest class: 0.500" in presence
    assert "accuracy 0.500 on 2 images" in closure          # row b: truth almost_closed, answer na
    assert "accuracy 0.500 on 2 images" in circularity      # row b answered na, row a right


def test_sketches_demo_scores_top_k_as_scikit_learn_does():
    import numpy as np
    from sklearn.metrics import top_k_accuracy_score

    from prism.cli.demo_sketches import top_k_report

    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(10)]
    scores = rng.random((50, 10))
    y = rng.integers(0, 10, 50)
    results = []
    for row in scores:  # as Serve answers: the ranked classes, best first
        order = np.argsort(-row)
        results.append({"prediction": names[order[0]], "top_k": [{"class": names[j]} for j in order[:5]]})
    line = top_k_report([names[t] for t in y], results, 5, 10)
    top1 = top_k_accuracy_score(y, scores, k=1, labels=range(10))
    top5 = top_k_accuracy_score(y, scores, k=5, labels=range(10))
    assert line == f"top-1 {top1:.3f}, top-5 {top5:.3f} on 50 images (chance 0.100 and 0.500)"
    assert top_k_report(["c0", "c1"], results[:2], 1, 2).endswith("on 2 images (chance 0.500)")
