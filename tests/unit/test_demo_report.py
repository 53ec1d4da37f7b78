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
