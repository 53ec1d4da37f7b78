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

    cfg = load_config(JOB, [*SHORT, f"train.storage_path={workdir / 'runs'}",
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
