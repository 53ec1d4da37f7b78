"""``prism demo``: the whole path on embedded defaults, narrated.

Synthetic circles → training with 2 Ray Train workers (local Ray) → MLflow run + registered model
(SQLite in the working folder) → Ray Serve endpoint for ``models:/circles@champion`` → a few HTTP
predictions → the command to browse it all with ``mlflow ui``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["DEMO_OVERRIDES", "run_demo"]

DEMO_JOB = Path("jobs/circles.yaml")
SERVE_CONFIG = Path("serve_configs/circles.yaml")
# Two workers of half a CPU each leave room for Ray Data's decoding on a 2-CPU laptop.
DEMO_OVERRIDES = ["train.num_workers=2", "train.cpus_per_worker=0.5"]


def run_demo(workdir: Path = Path("."), overrides: list[str] | None = None, serve_port: int = 8000) -> None:
    """Run the demo in ``workdir`` (which must hold ``jobs/circles.yaml`` and ``serve_configs/``)."""
    import pandas as pd
    from ray import serve

    from prism.client import classify_circles
    from prism.config import load_config
    from prism.data import resolve_labels_csv, split_table
    from prism.serve import run_local
    from prism.tasks import build_task
    from prism.tracking import browse_command, configure_tracking
    from prism.train.driver import run_training

    os.chdir(workdir)
    for needed in (DEMO_JOB, SERVE_CONFIG):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} not found: run the demo from the project's root folder")
    cfg = load_config(DEMO_JOB, [*DEMO_OVERRIDES, *(overrides or [])])
    print("[prism] demo 1/3 — training: tiny random-init DINOv2-architecture backbone on synthetic circles, "
          f"{cfg.train.num_workers} Ray Train workers (the scores show the pipeline learns, not what DINOv2 "
          "can do)", flush=True)
    outcome = run_training(cfg, job_file=str(DEMO_JOB))

    uri = f"models:/{cfg.tracking.model_name}@{cfg.tracking.alias}"
    print(f"[prism] demo 2/3 — serving {uri} on Ray Serve", flush=True)
    url = run_local(SERVE_CONFIG, model_uri=uri, port=serve_port, blocking=False)
    try:
        csv = resolve_labels_csv(cfg)
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
        _, val = split_table(table, build_task(cfg).stratify_key(table), cfg.data.val_fraction, cfg.data.split_seed)
        sample = val.head(4)
        paths = [str(csv.parent / p) for p in sample["image"]]
        results = classify_circles(paths, output_format="json", endpoint=url, silent=True)
        print(f"[prism] demo 3/3 — POST {url}/predict with 4 validation images (truth in brackets):")
        for r, truth in zip(results, sample["presence"], strict=True):
            short = {h: r[h]["prediction"] for h in ("presence", "closure", "circularity")}
            print(f"  {Path(r['image']).name}: {json.dumps(short)}  [{truth}]")
    finally:
        serve.shutdown()
    print(f"[prism] demo done: best {outcome.metric} {outcome.best_metric:.3f}; "
          f"model version {outcome.model_version} of '{cfg.tracking.model_name}'")
    print(f"[prism] browse runs and registered models: {browse_command(configure_tracking())}")
