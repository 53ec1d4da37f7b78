"""The benchmark record and report: ratio direction, targets, and a doc whose hand-written parts survive."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from _common import BenchResult, Row  # noqa: E402
from report import BEGIN, END, load_results, render, update_doc  # noqa: E402


@pytest.mark.parametrize(
    ("unit", "prism", "reference", "ratio"),
    [
        ("img/s", 90.0, 100.0, 0.9),      # rate: prism / reference
        ("FLOP/s", 5e10, 1e11, 0.5),
        ("ms", 20.0, 10.0, 0.5),          # time: reference / prism (Prism twice as slow)
        ("s", 10.0, 20.0, 2.0),
        ("MiB", 4000.0, 2000.0, 0.5),     # memory: reference / prism (Prism uses twice as much)
    ],
)
def test_ratio_is_above_one_when_prism_is_ahead(unit, prism, reference, ratio):
    assert Row("x", unit, prism, reference).ratio == pytest.approx(ratio)


def test_target_on_ratio_and_on_prism_figure():
    assert Row("x", "img/s", 96, 100, target=0.95).met is True
    assert Row("x", "img/s", 94, 100, target=0.95).met is False
    assert Row("x", "img/s", 94, 100).met is None
    assert Row("x", "img/s", 2.5, 100, target=2.0, target_on="prism").met is True


def test_zero_figure_gives_nan_ratio_not_a_crash():
    row = Row("x", "img/s", 0.0, 10.0, target=1.0)
    assert math.isnan(row.ratio) and row.met is False


def _result(name: str, title: str, rows: list[Row]) -> dict:
    return BenchResult(name=name, title=title, rows=rows, quick=True, setup="tiny",
                       machine={"cpu": "Test CPU", "cpus": 2, "torch": "2.x"}).to_dict()


def test_render_lists_every_row_and_the_targets_summary():
    results = [
        _result("serve_throughput", "Serving", [Row("c=32 batched vs direct", "img/s", 80, 100, target=0.8)]),
        _result("train_throughput", "Training", [Row("1 worker vs plain", "img/s", 90, 100, target=0.95),
                                                  Row("2 vs 1", "img/s", 150, 100)]),
    ]
    results.append(_result("serve_throughput_dinov2_vits14_112", "Serving ViT-S", [Row("c=1", "img/s", 1, 2)]))
    results.append(_result("model_flops", "Model", [Row("fwd", "FLOP/s", 1, 2)]))
    text = render(results)
    assert text.startswith(BEGIN) and text.endswith(END)
    # the fixed order, not file order; a variant follows its base benchmark
    order = [text.index(f"### {t}\n") for t in ("Training", "Serving", "Serving ViT-S", "Model")]
    assert order == sorted(order)
    assert "| 1 worker vs plain | img/s | 90.0 | 100 | 0.9 | ratio ≥ 0.95 ❌ |" in text
    assert "| c=32 batched vs direct | img/s | 80.0 | 100 | 0.8 | ratio ≥ 0.8 ✅ |" in text
    assert "| 2 vs 1 | img/s | 150 | 100 | 1.5 |  |" in text
    summary = text.split("### Against the targets", 1)[1].split("### Training", 1)[0]
    assert "1 worker vs plain" in summary and "2 vs 1" not in summary
    assert "Test CPU, 2 CPUs" in text


def test_update_doc_keeps_hand_written_text(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\nintro\n\n{BEGIN}\nold table\n{END}\n\n## Fixes\n\nbefore/after by hand\n")
    out = update_doc(doc, [_result("model_flops", "Model", [Row("fwd", "FLOP/s", 5e10, 1e11, target=0.5)])])
    assert "old table" not in out
    assert out.startswith("# B\n\nintro\n\n") and out.endswith("## Fixes\n\nbefore/after by hand\n")
    assert "50.0 G" in out


def test_update_doc_refuses_a_doc_without_markers(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# hand written only\n")
    with pytest.raises(ValueError, match="markers"):
        update_doc(doc, [])


def test_missing_doc_starts_from_the_skeleton(tmp_path):
    out = update_doc(tmp_path / "none.md", [_result("x", "X", [Row("a", "img/s", 1, 1)])])
    assert out.startswith("# Benchmarks") and "### X" in out


def test_results_round_trip_through_json(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(_result("a", "A", [Row("r", "ms", 10, 5)])))
    [res] = load_results(tmp_path)
    assert res["rows"][0]["ratio"] == pytest.approx(0.5)
    with pytest.raises(FileNotFoundError, match="make bench"):
        load_results(tmp_path / "empty")
