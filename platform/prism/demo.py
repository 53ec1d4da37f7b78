"""``prism demo``: the whole path on embedded defaults, narrated.

Synthetic circles → training on Ray Train (local Ray) → MLflow run + registered model (SQLite in the
working folder) → predictions from ``models:/circles@champion`` → the command to browse it all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["run_demo"]

DEMO_JOB = Path("jobs/circles.yaml")


def run_demo(workdir: Path = Path("."), overrides: list[str] | None = None) -> None:
    """Run the demo in ``workdir`` (which must hold ``jobs/circles.yaml``)."""
    import pandas as pd

    from prism.config import load_config
    from prism.data import resolve_labels_csv
    from prism.predictor import load_predictor
    from prism.train.driver import run_training

    os.chdir(workdir)
    if not DEMO_JOB.is_file():
        raise FileNotFoundError(f"{DEMO_JOB} not found: run the demo from the project's root folder")
    cfg = load_config(DEMO_JOB, overrides or [])
    print("[prism] demo: tiny random-init DINOv2-architecture backbone on synthetic circles "
          "(numbers show the pipeline works, not what DINOv2 can do)", flush=True)
    outcome = run_training(cfg, job_file=str(DEMO_JOB))
    uri = f"models:/{cfg.tracking.model_name}@{cfg.tracking.alias}"
    pred = load_predictor(uri)
    csv = resolve_labels_csv(cfg)
    sample = pd.read_csv(csv, dtype=str, keep_default_na=False).tail(4)
    results = pred.predict([str(csv.parent / p) for p in sample["image"]], tta=True)
    print(f"[prism] predictions of {uri} (with TTA) on 4 images, truth in brackets:")
    for r, (_, truth) in zip(results, sample.iterrows(), strict=True):
        short = {h: r[h]["prediction"] for h in pred.task.label_columns()}
        print(f"  {Path(r['image']).name}: {json.dumps(short)}  [{truth['presence']}]")
    print(f"[prism] demo done: best {outcome.metric} {outcome.best_metric:.3f}")
