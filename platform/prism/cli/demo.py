"""``prism demo``: the whole path on embedded defaults, narrated.

Synthetic circles → training with 2 Ray Train workers (local Ray) → MLflow run + registered model
(SQLite in the working folder) → Ray Serve endpoint for ``models:/circles@champion`` → a few HTTP
predictions → the command to browse it all with ``mlflow ui``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

__all__ = ["DEMO_OVERRIDES", "finish_demo", "held_out_report", "load_demo_job", "run_demo"]

DEMO_JOB = Path("jobs/circles.yaml")
SERVE_CONFIG = Path("serve_configs/circles.yaml")
# Two workers of half a CPU each leave room for Ray Data's decoding on a 2-CPU laptop.
DEMO_OVERRIDES = ["train.num_workers=2", "train.cpus_per_worker=0.5"]


def held_out_report(cfg, val, results: list[dict]) -> list[str]:
    """One line per head: accuracy of ``results`` on the rows of ``val`` where the head is defined, vs chance.

    ``val`` is a split frame (``path`` + ``y_<head>`` class indices, -1 where undefined); chance is the
    accuracy of always answering the head's most frequent class among those rows. These are the answers
    users get: a conditional head answers ``na`` where the predicted parent class rules it out, and that
    counts as wrong here, while training's ``val/<head>/accuracy`` scores the head's own argmax on the
    rows where it is defined — so these can be a little lower.
    """
    lines = []
    for h in cfg.task.heads:
        y = val[f"y_{h.name}"].to_numpy()
        defined = y >= 0
        if not defined.any():
            continue
        predicted = [h.classes.index(r[h.name]["prediction"]) if r[h.name]["prediction"] in h.classes else -1
                     for r in results]
        acc = float((np.asarray(predicted)[defined] == y[defined]).mean())
        chance = float(np.bincount(y[defined]).max() / defined.sum())
        lines.append(f"  {h.name:12s} accuracy {acc:.3f} on {int(defined.sum())} images  "
                     f"(chance, always the commonest class: {chance:.3f})"
                     + ("  — an 'na' answer counts as wrong" if h.only_when else ""))
    return lines


def load_demo_job(workdir: Path, job: Path, serve_config: Path, overrides: list[str] | None):
    """``chdir`` to ``workdir``, check it holds ``job`` and ``serve_config``, and load ``job`` with the demo's
    2-worker overrides, then the user's."""
    from prism.config import load_config

    os.chdir(workdir)
    for needed in (job, serve_config):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} not found: run the demo from the project's root folder")
    return load_config(job, [*DEMO_OVERRIDES, *(overrides or [])])


def finish_demo(outcome, model_name: str) -> None:
    """The demo's closing lines: best metric, registered version, how to browse it all."""
    from prism.tracking import browse_command, configure_tracking

    print(f"[prism] demo done: best {outcome.metric} {outcome.best_metric:.3f}; "
          f"model version {outcome.model_version} of '{model_name}'")
    print(f"[prism] browse runs and registered models: {browse_command(configure_tracking())}")


def run_demo(workdir: Path = Path("."), overrides: list[str] | None = None, serve_port: int = 8000) -> None:
    """Run the demo in ``workdir`` (which must hold ``jobs/circles.yaml`` and ``serve_configs/``)."""
    from ray import serve

    from prism.data import split_labels
    from prism.engine.driver import run_training
    from prism.serve import run_local
    from prism.tasks import build_task
    from prism.tasks.multihead.client import classify_circles

    cfg = load_demo_job(workdir, DEMO_JOB, SERVE_CONFIG, overrides)
    print("[prism] demo 1/3 — training: tiny random-init DINOv2-architecture backbone on synthetic circles, "
          f"{cfg.train.num_workers} Ray Train workers (the scores show the pipeline learns, not what DINOv2 "
          "can do)", flush=True)
    outcome = run_training(cfg, job_file=str(DEMO_JOB))

    uri = f"models:/{cfg.tracking.model_name}@{cfg.tracking.alias}"
    print(f"[prism] demo 2/3 — serving {uri} on Ray Serve", flush=True)
    url = run_local(SERVE_CONFIG, model_uri=uri, port=serve_port, blocking=False)
    try:
        val = split_labels(cfg, build_task(cfg), use_ray=False).val  # the rows training held out
        results = classify_circles(list(val["path"]), output_format="json", endpoint=url, silent=True)
        print(f"[prism] demo 3/3 — POST {url}/predict with the {len(val)} held-out images:")
        for line in held_out_report(cfg, val, results):
            print(line)
        for r, (_, row) in zip(results[:4], val.head(4).iterrows(), strict=False):
            short = {h: r[h]["prediction"] for h in ("presence", "closure", "circularity")}
            print(f"  {Path(r['image']).name}: {json.dumps(short)}  [truth: presence "
                  f"{cfg.task.heads[0].classes[int(row['y_presence'])]}]")
    finally:
        serve.shutdown()
    finish_demo(outcome, cfg.tracking.model_name)
