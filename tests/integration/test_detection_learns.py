"""Detection learns, through the one path: ``jobs/shapes_detect.yaml`` (shorter) trained by Ray Train on a
local Ray, registered, and scored from the registry on the held-out shapes against the COCO file's own
ground truth (pixels, real category ids) — far above the same model untrained."""

from __future__ import annotations

import pytest
import torch

from prism.config import load_config
from tests.conftest import ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")]

JOB = ROOT / "jobs" / "shapes_detect.yaml"
SHORT = ["data.synthetic.n=400", "stages.1.epochs=17", "tracking.model_name=shapes-it"]
AP50_MIN, MARGIN = 0.15, 0.1  # measured: untrained 0.000, trained 0.256 (loop and registry agree)


def held_out_ap50(cfg, predict_batch) -> float:
    """AP50 of ``predict_batch(list of PIL images) -> list of results`` on the validation split, scored by
    COCO against the file's ground truth."""
    from PIL import Image

    from prism.data.coco_datasets import coco_split
    from prism.tasks.detection.coco_eval import coco_box_stats

    _, val = coco_split(cfg)
    dets = []
    for row, result in zip(val.rows.itertuples(), predict_batch([Image.open(p).convert("RGB") for p in val.rows["path"]]),
                           strict=True):
        dets += [{"image_id": int(row.image_id), "category_id": d["category_id"], "bbox": d["bbox"],
                  "score": d["score"]} for d in result["detections"]]
    return coco_box_stats(val.ground_truth(), dets)["AP50"]


@pytest.fixture(scope="module")
def trained(ray_local, workdir):
    from prism.engine.driver import run_training

    cfg = load_config(JOB, [*SHORT, f"train.storage_path={workdir / 'runs'}", "train.checkpoints_to_keep=18",
                            f"data.synthetic.cache_dir={workdir / 'data'}"])
    return cfg, run_training(cfg, job_file=str(JOB))


def test_a_tiny_detector_beats_its_untrained_self_on_held_out_shapes(trained):
    from prism.engine.model import build_model
    from prism.inference.predictor import Predictor, load_predictor
    from prism.tasks import build_task

    cfg, outcome = trained
    task = build_task(cfg)
    torch.manual_seed(0)
    untrained = Predictor(cfg, task, build_model(cfg, task).eval(), "cpu")
    served = load_predictor("models:/shapes-it@champion", device="cpu")
    before = held_out_ap50(cfg, lambda images: untrained.predict(images, tta=False))
    after = held_out_ap50(cfg, lambda images: served.predict(images, tta=False))
    history = outcome.history
    print(f"held-out AP50: untrained {before:.3f}, trained {after:.3f}; loop's val/AP50 "
          f"{max(h.get('val/AP50', 0) for h in history):.3f}; train loss {history[0]['train/loss']:.2f} → "
          f"{history[-1]['train/loss']:.2f}")
    assert history[-1]["train/loss"] < 0.6 * history[0]["train/loss"]
    assert after >= AP50_MIN and after >= before + MARGIN, (before, after)


def test_prism_evaluate_reports_what_pycocotools_scores_and_logs_a_run(trained, workdir):
    """``prism evaluate`` of the registered model on its validation split: the metrics are pycocotools' on
    the detections.json it writes, against the COCO file's ground truth; the figures, tables, samples and
    report.md are written and logged as an MLflow run of the model's experiment."""
    import json

    import mlflow

    from prism.cli.main import main
    from prism.data.coco_datasets import coco_split
    from tests.helpers.coco import pycocotools_stats

    cfg, _ = trained
    out = workdir / "eval"
    assert main(["evaluate", "--model", "models:/shapes-it@champion", "--out", str(out), "--samples", "4"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    _, val = coco_split(cfg)
    ref = pycocotools_stats(val.ground_truth(), json.loads((out / "detections.json").read_text()))
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert metrics["metrics"][name] == pytest.approx(ref[name], abs=1e-9), name
    assert metrics["metrics"]["AP50"] >= AP50_MIN and metrics["n_images"] == len(val.rows)
    for name in ("pr_curves.png", "class_ap.png", "confidence.png", "class_counts.png", "per_class.csv", "report.md"):
        assert (out / name).stat().st_size > 0, name
    assert len(list((out / "samples").glob("*.png"))) == 4
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment],
                              filter_string="tags.`prism.kind` = 'evaluation'", output_format="list")
    assert len(runs) == 1 and runs[0].data.metrics["eval/AP50"] == pytest.approx(metrics["metrics"]["AP50"])
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id, "evaluation")}
    assert {"evaluation/report.md", "evaluation/pr_curves.png", "evaluation/detections.json"} <= logged


def test_train_eval_only_scores_the_jobs_model_without_training(trained, workdir):
    import json

    from prism.cli.main import main

    cfg, outcome = trained
    out = workdir / "eval_only"
    args = ["train", str(JOB), *SHORT, f"train.storage_path={workdir / 'runs'}",
            f"data.synthetic.cache_dir={workdir / 'data'}", "--eval-only", "--out", str(out), "--no-log-run"]
    assert main(args) == 0
    again = json.loads((out / "metrics.json").read_text())["metrics"]
    first = json.loads((workdir / "eval" / "metrics.json").read_text())["metrics"]
    assert again == pytest.approx(first)
    metric = cfg.train.metric  # the registered model is the best epoch by it, scored on the same split
    best = max(outcome.history, key=lambda h: h[metric])
    assert again[metric.removeprefix("val/")] == pytest.approx(best[metric], abs=0.01)


def test_resume_continues_a_detection_run(trained, workdir):
    """From the checkpoint of epoch 16 of 18: epochs 17 and 18 run, from the trained weights."""
    import json
    from pathlib import Path

    from prism.engine.driver import run_training

    _, first = trained
    start = Path(first.best_checkpoint).parent / "epoch_0016"
    assert json.loads((start / "state.json").read_text())["epoch"] == 16
    cfg = load_config(JOB, [*SHORT, "tracking.model_name=null", f"train.storage_path={workdir / 'resumed'}",
                            f"data.synthetic.cache_dir={workdir / 'data'}", f"train.resume_from={start}"])
    resumed = run_training(cfg, job_file=str(JOB))
    assert [int(h["epoch"]) for h in resumed.history] == list(range(1, 19))
    assert resumed.history[:16] == [pytest.approx(h) for h in first.history[:16]]  # carried over, not re-run
    assert resumed.history[16]["train/loss"] < 0.6 * first.history[0]["train/loss"]  # went on from trained weights


def test_the_shipped_detection_space_sweeps_through_tune(ray_local, workdir):
    """tune_spaces/detect.yaml's keys on jobs/shapes_detect.yaml (2 samples, 3 epochs, 120 images): both
    trials report val/AP each epoch and the best is registered as the candidate, which predicts boxes."""
    import yaml

    from prism.inference.predictor import load_predictor
    from prism.tune import run_sweep

    space = yaml.safe_load((ROOT / "tune_spaces" / "detect.yaml").read_text())
    space["sweep"].update(num_samples=2, asha={"max_t": None, "grace_period": 3, "reduction_factor": 2})
    path = workdir / "detect_space.yaml"
    path.write_text(yaml.safe_dump(space))
    outcome = run_sweep(JOB, path, ["data.synthetic.n=120", "stages.1.epochs=2", "tracking.model_name=shapes-tune",
                                    "tracking.experiment=shapes-tune", f"train.storage_path={workdir / 'tune'}",
                                    f"data.synthetic.cache_dir={workdir / 'data'}"])
    assert outcome.metric == "val/AP" and len(outcome.table) == 2
    assert set(outcome.table["epochs"]) == {3}
    assert (outcome.model_version, outcome.alias) == ("1", "candidate")
    candidate = load_predictor("models:/shapes-tune@candidate", device="cpu")
    from PIL import Image

    image = Image.new("RGB", (64, 48), (30, 30, 30))
    (result,) = candidate.predict([image], tta=False, options={"max_detections": 3})
    assert len(result["detections"]) == 3 and {"bbox", "category_id", "score"} <= set(result["detections"][0])
