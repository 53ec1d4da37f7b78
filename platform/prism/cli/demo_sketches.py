"""``prism demo sketches``: single-label classification end to end, then classes added while serving.

Synthetic sketches of 10 classes (``jobs/sketches.yaml``) → training with 2 Ray Train workers (local Ray) →
MLflow run + registered model (SQLite in the working folder) → Ray Serve (``serve_configs/classify.yaml``) →
the held-out drawings posted over HTTP, scored top-1 / top-5 against chance → two classes the model never
saw, added from :data:`SHOTS` example drawings each (``POST /classes``) → new drawings of them ranked by the
nearest class prototype (``zero_shot=true``), against chance.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["NEW_CLASSES", "SHOTS", "post_images", "run_sketches_demo", "top_k_report"]

DEMO_JOB = Path("jobs/sketches.yaml")
SERVE_CONFIG = Path("serve_configs/classify.yaml")
NEW_CLASSES = ("umbrella", "star")
"""Classes the demo adds while serving: not among ``jobs/sketches.yaml``'s classes (checked)."""
SHOTS = 5
QUERIES = 50
TIMEOUT_S = 120


def top_k_report(truth: Sequence[str], results: Sequence[dict], k: int, n_classes: int) -> str:
    """``top-1 …, top-k …`` of ``results`` (Serve's ``{"prediction", "top_k": [{"class"}, …]}``) against
    ``truth``, with chance for ``n_classes`` ranked (1/K, k/K); ``k=1``: top-1 alone."""
    pairs = list(zip(results, truth, strict=True))
    top1 = np.mean([r["prediction"] == t for r, t in pairs])
    if k == 1:
        return f"top-1 {top1:.3f} on {len(pairs)} images (chance {1 / n_classes:.3f})"
    topk = np.mean([t in [c["class"] for c in r["top_k"][:k]] for r, t in pairs])
    return (f"top-1 {top1:.3f}, top-{k} {topk:.3f} on {len(pairs)} images "
            f"(chance {1 / n_classes:.3f} and {min(k, n_classes) / n_classes:.3f})")


def post_images(url: str, paths: Sequence[Path], route: str = "/predict", per_request: int = 16,
                **fields: str) -> list[dict]:
    """POST ``paths`` as multipart ``images`` (``per_request`` at a time) with form ``fields``; the JSON
    answers in order (for ``/classes``: the last answer). Error answers raise ``RuntimeError`` with the body."""
    import requests

    out: list[dict] = []
    for start in range(0, len(paths), per_request):
        part = paths[start:start + per_request]
        files = [("images", (p.name, p.read_bytes(), "image/png")) for p in part]
        resp = requests.post(f"{url}{route}", data=fields, files=files, timeout=TIMEOUT_S)
        if not resp.ok:
            raise RuntimeError(f"POST {route} answered {resp.status_code}: {resp.text[:500]}")
        body = resp.json()
        out.extend(body if isinstance(body, list) else [body])
    return out


def _new_drawings(folder: Path, seed: int) -> dict[str, list[Path]]:
    """``SHOTS + QUERIES`` fresh drawings of each of :data:`NEW_CLASSES` (another seed than training's)."""
    import pandas as pd

    from prism.data.synth import generate_sketches

    out = generate_sketches(folder, n=(SHOTS + QUERIES) * len(NEW_CLASSES), size=32, seed=seed,
                            classes=list(NEW_CLASSES), progress=False)
    labels = pd.read_csv(out / "labels.csv")
    return {c: [out / p for p in labels.loc[labels["label"] == c, "image"]] for c in NEW_CLASSES}


def run_sketches_demo(workdir: Path = Path("."), overrides: list[str] | None = None, serve_port: int = 8000) -> None:
    """Run the demo in ``workdir`` (which must hold ``jobs/sketches.yaml`` and ``serve_configs/``)."""
    from ray import serve

    from prism.cli.demo import finish_demo, load_demo_job
    from prism.data import split_labels
    from prism.engine.driver import run_training
    from prism.serve import run_local
    from prism.tasks import build_task

    cfg = load_demo_job(workdir, DEMO_JOB, SERVE_CONFIG, overrides)
    classes = list(cfg.task.classes)
    if set(NEW_CLASSES) & set(classes):
        raise ValueError(f"the demo adds {list(NEW_CLASSES)} while serving: leave them out of task.classes")
    print(f"[prism] demo 1/4 — training: tiny random-init backbone on synthetic sketches of {len(classes)} "
          f"classes, {cfg.train.num_workers} Ray Train workers (the scores show the pipeline learns, not what "
          "DINOv2 can do)", flush=True)
    outcome = run_training(cfg, job_file=str(DEMO_JOB))

    uri = f"models:/{cfg.tracking.model_name}@{cfg.tracking.alias}"
    print(f"[prism] demo 2/4 — serving {uri} on Ray Serve", flush=True)
    url = run_local(SERVE_CONFIG, model_uri=uri, port=serve_port, blocking=False)
    try:
        val = split_labels(cfg, build_task(cfg), use_ray=False).val  # the rows training held out
        paths = [Path(p) for p in val["path"]]
        results = post_images(url, paths, tta="false")
        truth = [classes[int(y)] for y in val["y_label"]]
        print(f"[prism] demo 3/4 — POST {url}/predict with the {len(paths)} held-out drawings: "
              + top_k_report(truth, results, 5, len(classes)))

        with tempfile.TemporaryDirectory() as tmp:
            drawings = _new_drawings(Path(tmp), seed=cfg.data.synthetic.seed + 1)
            for name, files in drawings.items():
                post_images(url, files[:SHOTS], route="/classes", name=name)
            print(f"[prism] demo 4/4 — POST {url}/classes: added {', '.join(NEW_CLASSES)} from {SHOTS} drawings "
                  "each, no retraining; ranking new drawings of them with zero_shot=true:")
            queries = [(name, p) for name, files in drawings.items() for p in files[SHOTS:]]
            answers = post_images(url, [p for _, p in queries], zero_shot="true", tta="false")
            print("  " + top_k_report([n for n, _ in queries], answers, 1, len(NEW_CLASSES)))
    finally:
        serve.shutdown()
    finish_demo(outcome, cfg.tracking.model_name)
