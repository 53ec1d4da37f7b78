"""Evaluate a trained model on labelled images, with test-time augmentation.

Which rows are scored (:func:`select_rows`):

- a labels CSV given: every row of it; relative image paths under ``image_root``, default the CSV's folder.
- none given: the **validation split** of the model's own training data (``data.*`` of its config), split
  as training split it (``data.val_fraction``, ``data.split_seed``, :func:`prism.data.datasets.split_labels`).
  The split's fingerprint must equal the one training wrote into the bundle (``metrics.json``, also the
  version tag ``prism.val_fingerprint``); if the data changed since, evaluate refuses rather than score
  rows that may have been training rows.

Batches go through the task's collate class and :func:`~prism.engine.predict.predict_batch`, the same
calls (and TTA default) as training's validation. A task whose rows are not a labels table (detection: a
COCO file, :func:`prism.tasks.detection.evaluation.select_coco_rows`) selects its own :class:`EvalRows`,
with the batch columns its collate class reads and the metric that scores them, and goes through the same
loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prism.data.datasets import resolve_image_root, split_fingerprint, split_labels
from prism.data.table import read_label_table
from prism.engine.inputs import model_inputs, stack_inputs, to_device
from prism.engine.predict import predict_batch
from prism.inference.predictor import Predictor

__all__ = ["EvalReport", "EvalRows", "evaluate", "select_rows"]


@dataclass
class EvalRows:
    """Rows to score: ``rows`` has ``path`` (absolute) and one int64 ``y_<head>`` per head (-1 = ignored).

    ``scored`` (JSON-able) says which rows these are: ``rows`` (``"validation split"`` or ``"all rows"``),
    ``labels_csv``, ``image_root``, ``n_images``, ``fingerprint`` (:func:`split_fingerprint` of ``rows``) and,
    for the validation split, ``val_fraction`` and ``split_seed``.
    """

    rows: pd.DataFrame
    skipped: int
    scored: dict[str, Any]
    columns: dict[str, np.ndarray] | Callable[[int, int], dict[str, np.ndarray]] | None = None
    """Per-row batch columns beside the image (default: the ``y_<head>`` columns of ``rows``), or a function
    ``(start, stop) -> columns of those rows`` that loads them batch by batch (e.g. masks, too many to hold)."""
    metrics: Any = None
    """The accumulator that scores them (default: ``task.metrics()``)."""
    options: list[dict[str, Any]] | None = None
    """Per-row request options (e.g. each row's segmentation prompt), laid over the evaluation's own; each
    image is prepared with its row's, as ``prism predict`` and Serve prepare it."""


@dataclass
class EvalReport:
    metrics: dict[str, float]
    stats: dict[str, Any]
    n_images: int
    skipped: int
    scored: dict[str, Any] = field(default_factory=dict)
    """Which rows were scored: :attr:`EvalRows.scored`."""
    paths: list[str] = field(default_factory=list)
    """The scored image files, in scoring order."""
    accumulator: Any = field(default=None, repr=False)
    """The metric accumulator after the pass (what a task's extra outputs, e.g. raw detections, come from)."""

    def describe(self) -> str:
        """Which rows were scored, one line, e.g. ``validation split: 120 images of …/labels.csv (…)``."""
        s = self.scored
        if "describe" in s:
            return s["describe"]
        where = f"{s['n_images']} images of {s['labels_csv']}"
        if s["rows"] == "validation split":
            return (f"validation split: {where} (data.val_fraction {s['val_fraction']}, data.split_seed "
                    f"{s['split_seed']}; fingerprint {s['fingerprint'][:12]})")
        return f"all rows: {where}"

    def save(self, out_dir: Path, task) -> list[Path]:
        """``metrics.json``, the task's figures (PNG) and tables (CSV) in ``out_dir``; ``report.md`` (what was
        scored, the metrics, the figures) is written by :meth:`write_summary` once every file is there."""
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [out_dir / "metrics.json"]
        written[0].write_text(json.dumps({"n_images": self.n_images, "skipped": self.skipped,
                                          "scored": self.scored, "metrics": self.metrics, **self.stats},
                                         indent=2))
        for rel, fig in task.figures(self.stats).items():
            path = out_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path)
            written.append(path)
        for rel, table in task.tables(self.stats).items():
            path = out_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(path, index=False)
            written.append(path)
        return written

    def write_summary(self, out_dir: Path, model: str, files: list[Path]) -> Path:
        """``report.md`` in ``out_dir``: the model, what was scored, the metrics table, the figures inline and
        links to the other ``files``."""
        out_dir = Path(out_dir)
        lines = [f"# Evaluation of {model}", "", f"Scored: {self.describe()}; {self.n_images} images, "
                 f"{self.skipped} skipped.", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {'n/a (nothing of that kind to score)' if v == -1 else f'{v:.4f}'} |"
                  for k, v in sorted(self.metrics.items()) if "/precision/" not in k and "/recall/" not in k]
        rel = [Path(f).resolve().relative_to(out_dir.resolve()) for f in files]
        figures = [r for r in rel if r.suffix == ".png" and len(r.parts) == 1]
        if figures:
            lines += ["", "## Figures", ""] + [f"![{r.stem}]({r.as_posix()})" for r in figures]
        others = sorted({r for r in rel if r not in figures and r.name != "report.md"})
        if others:
            lines += ["", "## Files", ""] + [f"- [{r.as_posix()}]({r.as_posix()})" for r in others]
        path = out_dir / "report.md"
        path.write_text("\n".join(lines) + "\n")
        return path


def select_rows(predictor: Predictor, labels_csv: Path | None = None, image_root: Path | None = None,
                image_column: str | None = None, on_bad_rows: str | None = None) -> EvalRows:
    """The rows :func:`evaluate` scores (see the module docstring).

    ``labels_csv=None``: the validation split of the model's training data, read with the config's
    ``data.on_bad_rows`` and ``data.check_images`` (what training did, so the same rows survive and the
    split is the same); ``image_root``, ``image_column`` and ``on_bad_rows`` must then be None. Otherwise
    every row of ``labels_csv``, image paths under ``image_root`` (default the CSV's folder),
    ``image_column`` default ``data.image_column``, ``on_bad_rows`` default ``error``.
    """
    cfg, task = predictor.cfg, predictor.task
    if labels_csv is None:
        given = {"image_root": image_root, "image_column": image_column, "on_bad_rows": on_bad_rows}
        if any(v is not None for v in given.values()):
            raise ValueError(f"{[k for k, v in given.items() if v is not None]} only apply with labels_csv; the "
                             "validation split is read as training read it (the model config's data.*)")
        split = split_labels(cfg, task, use_ray=False)
        rows, skipped = split.val, len(split.table.skipped)
        recorded = _recorded_fingerprint(predictor)
        if recorded is not None and recorded != split.val_fingerprint:
            raise ValueError(
                f"the validation split rebuilt from the model's data config ({split.labels_csv}, fingerprint "
                f"{split.val_fingerprint[:12]}) is not the one the model was scored on at training (fingerprint "
                f"{recorded[:12]}): the data changed since, so some of these rows may be training rows. Pass "
                "--labels with a table of held-out images to score instead"
            )
        root = resolve_image_root(cfg)
        scored = {"rows": "validation split", "labels_csv": str(split.labels_csv),
                  "image_root": None if root is None else str(root), "val_fraction": cfg.data.val_fraction,
                  "split_seed": cfg.data.split_seed, "fingerprint": split.val_fingerprint}
    else:
        table = read_label_table(Path(labels_csv), image_column or cfg.data.image_column, task.label_columns(),
                                 task.unknown_labels, on_bad_rows or "error", image_root=image_root)
        targets = task.encode_labels(table.rows)
        rows = pd.concat([table.rows[["path"]], pd.DataFrame(targets)], axis=1)
        skipped = len(table.skipped)
        scored = {"rows": "all rows", "labels_csv": str(Path(labels_csv).resolve()),
                  "image_root": None if image_root is None else str(Path(image_root).resolve()),
                  "fingerprint": split_fingerprint(rows, Path(image_root or Path(labels_csv).parent).resolve())}
    scored.update(n_images=len(rows))
    return EvalRows(rows, skipped, scored)


def _recorded_fingerprint(predictor: Predictor) -> str | None:
    """The ``val_fingerprint`` training wrote into the bundle's ``metrics.json`` (None: older bundles)."""
    path = Path(predictor.source) / "metrics.json" if predictor.source else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text()).get("val_fingerprint")


def evaluate(predictor: Predictor, labels_csv: Path | None = None, image_column: str | None = None,
             tta: bool = True, batch_size: int = 32, on_bad_rows: str | None = None, progress: bool = True,
             image_root: Path | None = None, rows: EvalRows | None = None) -> EvalReport:
    """Metrics of ``predictor`` on the rows :func:`select_rows` picks (same arguments), or on ``rows``
    selected by the caller (a task's own selection, e.g. a COCO file).

    ``labels_csv=None`` scores the held-out validation split of the model's training data. ``tta``: the
    task's configured views (True, the default of training's validation, ``prism predict`` and Serve) or
    the raw output (False). Metrics are the task's (``<head>/accuracy``, …, ``loss``), unprefixed.
    """
    task = predictor.task
    selected = rows if rows is not None else select_rows(predictor, labels_csv, image_root, image_column,
                                                         on_bad_rows)
    rows = selected.rows
    columns = (selected.columns if selected.columns is not None else
               {c: rows[c].to_numpy(np.int64) for c in rows.columns if c.startswith("y_")})
    acc = selected.metrics if selected.metrics is not None else task.metrics()
    collate = task.collate_fn()
    model, opts = predictor.model, predictor.options(tta=tta)
    paths = [str(p) for p in rows["path"]]
    steps = range(0, len(paths), batch_size)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="evaluate", unit="batch")
    row_opts = ([predictor.options({**opts.model_dump(exclude_none=True), **o}) for o in selected.options]
                if selected.options is not None else [opts] * len(paths))
    for start in steps:
        chunk = paths[start:start + batch_size]
        batch = stack_inputs([predictor.prepare(p, p, o)[0] for p, o in zip(chunk, row_opts[start:], strict=False)])
        batch.update(columns(start, start + len(chunk)) if callable(columns) else
                     {k: v[start:start + len(chunk)] for k, v in columns.items()})
        inputs, targets = collate(batch)  # the collate class training's validation batches go through
        inputs = model_inputs(inputs, predictor.device, model.backbone.mean, model.backbone.std)
        preds = predict_batch(task, model, inputs, tta=bool(opts.tta), amp=predictor.cfg.train.amp)
        acc.update(preds, to_device(targets, predictor.device))
    return EvalReport(acc.compute(prefix=""), acc.export(), len(paths), selected.skipped, selected.scored, paths, acc)
