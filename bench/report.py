"""Render ``bench/results/*.json`` into ``docs/benchmarks.md``.

Only the part between the two markers below is rewritten; what is written around it by hand (the fixes
with their before/after figures, the GPU section) is kept. ``make bench`` runs this after every benchmark.

    python bench/report.py                       # bench/results → docs/benchmarks.md
    python bench/report.py --results DIR --doc FILE
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from _common import RESULTS, ROOT

BEGIN = "<!-- results:begin (written by bench/report.py from bench/results/*.json; edits here are lost) -->"
END = "<!-- results:end -->"
ORDER = ["train_throughput", "data_throughput", "shard_throughput", "serve_throughput", "model_flops", "pca_throughput",
         "features_extract", "deformable_attention"]

SKELETON = f"""# Benchmarks

`make bench` runs every benchmark and rewrites the tables below; each is also runnable alone, with
`--quick` for a run of about a minute (`python bench/<name>.py --quick`).

{BEGIN}
{END}
"""


def _num(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if abs(x) >= 1e9:
        return f"{x / 1e9:.1f} G"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def _target(row: dict[str, Any]) -> str:
    if row.get("target") is None:
        return ""
    on = row.get("target_on", "ratio")
    mark = "✅" if row.get("met") else "❌"
    if on == "prism_max":
        return f"Prism ≤ {row['target']:g} {row['unit']} {mark}"
    return f"{'ratio' if on == 'ratio' else 'Prism'} ≥ {row['target']:g} {mark}"


def _machine(m: dict[str, Any]) -> str:
    parts = [f"{m.get('cpu', '?')}, {m.get('cpus', '?')} CPUs"]
    if m.get("gpu"):
        parts.append(m["gpu"])
    parts.append(f"torch {m.get('torch', '?')}")
    if m.get("ray"):
        parts.append(f"Ray {m['ray']}")
    return ", ".join(parts)


def _script(name: str) -> str:
    """The benchmark script of a result (``serve_throughput_dinov2_vits14_112`` → ``serve_throughput``)."""
    return next((base for base in ORDER if name.startswith(base)), name)


def _section(res: dict[str, Any]) -> list[str]:
    run = "quick run" if res.get("quick") else "full run"
    lines = [f"### {res['title']}", "",
             f"`bench/{_script(res['name'])}.py` — {run}, {res.get('date', '')}; machine: {_machine(res.get('machine', {}))}.",
             ""]
    if res.get("setup"):
        lines += [f"Setup: {res['setup']}.", ""]
    lines += ["| what | unit | Prism | reference | ratio | target |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in res["rows"]:
        lines.append(f"| {r['what']} | {r['unit']} | {_num(r['prism'])} | {_num(r['reference'])} | "
                     f"{_num(r['ratio'])} | {_target(r)} |")
    lines.append("")
    if len({(r["prism_label"], r["reference_label"]) for r in res["rows"]}) <= 3:
        for p, ref in dict.fromkeys((r["prism_label"], r["reference_label"]) for r in res["rows"]):
            lines.append(f"- *Prism*: {p} — *reference*: {ref}")
    else:  # many rows of a few setups: each side's labels once
        lines.append("- *Prism*: " + "; ".join(dict.fromkeys(r["prism_label"] for r in res["rows"])))
        lines.append("- *reference*: " + "; ".join(dict.fromkeys(r["reference_label"] for r in res["rows"])))
    for note in res.get("notes", []):
        lines.append(f"- {note}")
    lines.append("")
    return lines


def render(results: list[dict[str, Any]]) -> str:
    """The generated block (markers included): a summary of targeted rows, then one section per benchmark."""
    def rank(res: dict[str, Any]) -> tuple[int, str]:  # variants (serve_throughput_<model>) follow their base
        return next((i for i, base in enumerate(ORDER) if res["name"].startswith(base)), len(ORDER)), res["name"]

    results = sorted(results, key=rank)
    lines = [BEGIN, "", "## Results", "",
             "Ratio > 1 means Prism is ahead: Prism / reference for rates, reference / Prism for times.", ""]
    targeted = [(res, r) for res in results for r in res["rows"] if r.get("target") is not None]
    if targeted:
        lines += ["### Against the targets", "", "| benchmark | what | ratio | target |", "| --- | --- | ---: | --- |"]
        for res, r in targeted:
            value = r["ratio"] if r.get("target_on", "ratio") == "ratio" else r["prism"]
            lines.append(f"| {res['title']} | {r['what']} | {_num(value)} | {_target(r)} |")
        lines.append("")
    for res in results:
        lines += _section(res)
    lines.append(END)
    return "\n".join(lines)


def update_doc(doc: Path, results: list[dict[str, Any]]) -> str:
    """Replace the block between the markers of ``doc`` (created from a skeleton when missing)."""
    text = doc.read_text() if doc.is_file() else SKELETON
    if BEGIN not in text or END not in text:
        raise ValueError(f"{doc}: the markers {BEGIN!r} and {END!r} are missing; add them where the tables go")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + render(results) + tail


def load_results(folder: Path) -> list[dict[str, Any]]:
    files = sorted(folder.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no results in {folder}; run `make bench` or `python bench/<name>.py` first")
    return [json.loads(f.read_text()) for f in files]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    text = update_doc(args.doc, load_results(args.results))
    args.doc.write_text(text)
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
