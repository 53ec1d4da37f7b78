"""Evaluate a trained model on a labelled image table, with test-time augmentation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prism.data.table import read_label_table
from prism.predictor import Predictor
from prism.tasks._images import to_model_input

__all__ = ["EvalReport", "evaluate"]


@dataclass
class EvalReport:
    metrics: dict[str, float]
    stats: dict[str, Any]
    n_images: int
    skipped: int

    def save(self, out_dir: Path, task) -> list[Path]:
        """``metrics.json`` and the task's figures (PNG) in ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [out_dir / "metrics.json"]
        written[0].write_text(json.dumps({"n_images": self.n_images, "skipped": self.skipped,
                                          "metrics": self.metrics, **self.stats}, indent=2))
        for rel, fig in task.figures(self.stats).items():
            path = out_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path)
            written.append(path)
        return written


def evaluate(predictor: Predictor, labels_csv: Path, image_column: str = "image", tta: bool = True,
             batch_size: int = 32, on_bad_rows: str = "error", progress: bool = True) -> EvalReport:
    """Metrics of ``predictor`` on ``labels_csv`` (same format as training data)."""
    task = predictor.task
    table = read_label_table(Path(labels_csv), image_column, task.label_columns(), task.unknown_labels,
                             on_bad_rows)
    targets = {k: torch.from_numpy(v) for k, v in task.encode_labels(table.rows).items()}
    acc = task.metrics()
    paths = list(table.rows["path"])
    steps = range(0, len(paths), batch_size)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="evaluate", unit="batch")
    for start in steps:
        chunk = paths[start:start + batch_size]
        arrays = np.stack([predictor.load_image(p, p) for p in chunk])
        x = torch.from_numpy(arrays)
        probs = task.infer(predictor.model, to_model_input(x, task.mean, task.std, predictor.device), tta=tta)
        acc.update(probs, {k: v[start:start + len(chunk)] for k, v in targets.items()})
    return EvalReport(acc.compute(prefix=""), acc.export(), len(paths), len(table.skipped))
