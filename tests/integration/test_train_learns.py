"""The whole training path on a local Ray: data → Ray Train → MLflow → registry → predictor.

One real training run of the demo job, made cheaper (half its synthetic circles, a shorter plan), is
shared by the tests of this module; it must learn: every head far above chance on held-out images.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score

from prism.config import load_config
from prism.tracking.registry import METRIC_VALUE_TAG, VAL_FINGERPRINT_TAG
from tests.conftest import CIRCLES_JOB

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# The demo job (jobs/circles.yaml) on 1,200 instead of 2,400 images, with 16 instead of 25 epochs.
LEARN_DATA = ["data.synthetic.n=1200", "data.batch_size=16", "tracking.experiment=learns"]
LEARN = [*LEARN_DATA, "stages=[{kind: probe, epochs: 1, lr: {head: 3.0e-3}}, {kind: lora, epochs: 1, lr: "
         "{head: 2.0e-3, lora: 2.0e-3}}, {kind: unfreeze, epochs: 14, blocks: all, lr: {head: 2.0e-3, lora: "
         "2.0e-3, backbone: 2.0e-3}}]"]
# Held-out accuracy each head must reach at the registered epoch (chance: 1/3, 1/2, 1/2), below the worst
# of 5 fresh runs of this job with train.seed 0..4 (presence / closure / circularity at the best epoch):
#   seed 0: 0.767 / 0.945 / 0.755   seed 1: 0.729 / 0.656 / 0.767   seed 2: 0.571 / 0.669 / 0.699
#   seed 3: 0.700 / 0.669 / 0.748   seed 4: 0.483 / 0.626 / 0.675 (the unfreeze stage at 2e-3 without warmup
#   diverged and never beat epoch 4). Closure (a gap in the stroke) is learnt last; the demo's full job
# (2,400 images, 25 epochs) reached 0.798 / 0.991 / 0.803. This test runs seed 0, and a rerun with one
# seed gives the same curve (tested below), so it sits far above these thresholds, not at the edge.
THRESHOLDS = {"presence": 0.43, "closure": 0.58, "circularity": 0.62}


@pytest.fixture(scope="module")
def trained(ray_local, workdir):
    from prism.engine.driver import run_training

    cfg = load_config(CIRCLES_JOB, [*LEARN, "train.storage_path=" + str(workdir / "runs")])
    outcome = run_training(cfg, job_file=str(CIRCLES_JOB))
    return cfg, outcome


def test_loss_falls_and_every_head_beats_chance(trained):
    cfg, o = trained
    losses = [h["train/loss"] for h in o.history]
    assert min(losses[-3:]) < losses[0] - 0.1, losses
    best = json.loads((o.best_checkpoint / "metrics.json").read_text())["metrics"]  # the registered epoch
    reached = {head: best[f"val/{head}/accuracy"] for head in THRESHOLDS}
    assert all(reached[h] >= THRESHOLDS[h] for h in THRESHOLDS), f"held-out accuracy {reached} < {THRESHOLDS}"
    # stages ran in order, epochs numbered over the whole plan
    assert [int(h["epoch"]) for h in o.history] == list(range(1, len(o.history) + 1))
    assert sorted({int(h["stage_index"]) for h in o.history}) == list(range(len(cfg.stages)))


def test_best_checkpoint_is_kept_by_the_configured_metric(trained):
    cfg, o = trained
    best = max(h[cfg.train.metric] for h in o.history)
    assert o.best_metric == pytest.approx(best)
    saved = json.loads((o.best_checkpoint / "metrics.json").read_text())["metrics"]
    assert saved[cfg.train.metric] == pytest.approx(best)
    kept = sorted(p.name for p in o.best_checkpoint.parent.glob("epoch_*"))
    assert len(kept) <= cfg.train.checkpoints_to_keep + 1  # top-k by metric (+ the latest)


def test_mlflow_run_has_config_metrics_plots(trained):
    cfg, o = trained
    client = mlflow.MlflowClient()
    run = client.get_run(o.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["backbone.name"] == "dinov2_tiny_conv"
    hist = client.get_metric_history(o.run_id, "val/macro_f1")
    assert [m.step for m in hist] == [int(h["epoch"]) for h in o.history]
    stage_hist = client.get_metric_history(o.run_id, "stage_index")
    assert {m.value for m in stage_hist} == {0, 1, 2}
    arts = {a.path for a in client.list_artifacts(o.run_id, "plots")}
    assert "plots/loss.png" in arts
    conf = {a.path for a in client.list_artifacts(o.run_id, "confusion")}
    assert conf == {"confusion/presence.png", "confusion/closure.png", "confusion/circularity.png"}
    resolved = mlflow.artifacts.load_text(f"runs:/{o.run_id}/config/resolved.yaml")
    assert "dinov2_tiny_conv" in resolved and "unfreeze" in resolved


def test_registered_version_holds_adapted_weights_only(trained):
    from prism.tracking import resolve_model_uri

    cfg, o = trained
    assert o.promoted
    bundle = resolve_model_uri("models:/circles@champion")
    files = {p.name for p in bundle.iterdir()}
    assert {"weights.safetensors", "config.yaml", "labels.json", "backbone.json"} <= files
    meta = json.loads((bundle / "backbone.json").read_text())
    assert meta["name"] == "dinov2_tiny_conv" and len(meta["weights_sha256"]) == 64
    labels = json.loads((bundle / "labels.json").read_text())
    assert labels["heads"]["presence"] == ["circle_clear", "circle_resembles", "no_circle"]


def test_predictor_from_registry_agrees_with_labels(trained, workdir):
    """Independent check: predictions from models:/circles@champion scored with sklearn on held-out rows."""
    from prism.data import split_labels
    from prism.inference.predictor import load_predictor
    from prism.tasks import build_task

    cfg, o = trained
    pred = load_predictor("models:/circles@champion")
    val = split_labels(cfg, build_task(cfg), use_ray=False).val
    results = pred.predict(list(val["path"]), tta=True)
    presence = cfg.task.heads[0].classes
    acc = accuracy_score([presence[i] for i in val["y_presence"]], [r["presence"]["prediction"] for r in results])
    assert acc >= THRESHOLDS["presence"], acc
    # the registered model is the best checkpoint: its held-out presence accuracy is the one training logged
    best = json.loads((o.best_checkpoint / "metrics.json").read_text())["metrics"]  # the registered epoch
    assert acc == pytest.approx(best["val/presence/accuracy"], abs=1.01 / len(val))  # a near-tie may flip
    # conditional heads answer "na" exactly where presence is predicted as no_circle
    for r in results:
        assert (r["closure"]["prediction"] == "na") == (r["presence"]["prediction"] == "no_circle")


# A short run on 60 images of which 3 are bad (skipped and counted, data.on_bad_rows: skip), registered as
# SHORT_MODEL: resumed, rerun and checked for its skipped rows by the tests below.
SHORT_MODEL = "circles-short"
SHORT = [
    "tracking.experiment=short", f"tracking.model_name={SHORT_MODEL}", "data.on_bad_rows=skip",
    "backbone.img_size=64", "train.checkpoints_to_keep=5",
    "stages=[{kind: probe, epochs: 1, lr: {head: 1e-3}}, {kind: lora, epochs: 1, lr: {head: 1e-3, lora: 1e-3}}]",
]


@pytest.fixture(scope="module")
def bad_data(workdir):
    """60 synthetic circles; row 0 undecodable, row 1 a missing file, row 2 an unknown label."""
    from prism.data.synth import SYNTH_GENERATORS

    root = SYNTH_GENERATORS["circles"](workdir / "bad", n=60, size=64, seed=5, progress=False)
    labels = pd.read_csv(root / "labels.csv", dtype=str, keep_default_na=False)
    (root / labels.loc[0, "image"]).write_bytes(b"not an image at all")  # undecodable
    labels.loc[1, "image"] = "images/missing.png"                          # missing file
    labels.loc[2, "presence"] = "oval"                                     # unknown label
    labels.to_csv(root / "labels.csv", index=False)
    return root


def short_config(bad_data: Path, *overrides: str):
    return load_config(CIRCLES_JOB, [*SHORT, f"data.root={bad_data}", *overrides])


@pytest.fixture(scope="module")
def short_run(ray_local, workdir, bad_data):
    from prism.engine.driver import run_training

    return run_training(short_config(bad_data, "train.storage_path=" + str(workdir / "runs")))


def test_skipped_rows_are_counted_and_logged(short_run):
    client = mlflow.MlflowClient()
    run = client.get_run(short_run.run_id)
    assert run.data.metrics["data/skipped_rows"] == 3
    assert int(run.data.params["data.n_train"]) + int(run.data.params["data.n_val"]) == 57
    skipped = pd.read_csv(mlflow.artifacts.download_artifacts(f"runs:/{short_run.run_id}/data/skipped_rows.csv"))
    reasons = " ".join(skipped["reason"])
    assert "file not found" in reasons and "presence='oval'" in reasons and "UnidentifiedImageError" in reasons


def test_resume_continues_after_the_checkpoint(short_run, workdir, bad_data):
    from prism.engine.driver import run_training

    first = short_run
    start = Path(first.best_checkpoint).parent / "epoch_0001"
    state = json.loads((start / "state.json").read_text())
    assert (state["stage_index"], state["epoch_in_stage"], state["epoch"]) == (1, 0, 1)  # next: stage 2
    # a checkpoint of a later stage knows its stage too (it once said stage 1: a resume re-ran stage 2)
    last = json.loads((start.parent / "epoch_0002" / "state.json").read_text())
    assert (last["stage_index"], last["epoch_in_stage"], last["epoch"]) == (2, 0, 2)  # the plan is done
    resumed = run_training(short_config(bad_data, "train.storage_path=" + str(workdir / "runs"),
                                        f"train.resume_from={start}", "tracking.model_name=null"))
    assert [int(h["epoch"]) for h in resumed.history] == [1, 2]
    assert resumed.history[0] == pytest.approx(first.history[0])  # epoch 1 carried over, not re-run
    assert int(resumed.history[1]["stage_index"]) == 1


def test_a_rerun_gives_the_same_curve_and_does_not_take_champion(short_run, workdir, bad_data):
    """train.seed fixes model init, the per-epoch shuffle and every row's augmentation (1 worker), so the
    rerun's curve is the first run's. Its registered version scores the same on the same validation split,
    which is no improvement: the champion alias stays on the first version."""
    from prism.engine.driver import run_training

    again = run_training(short_config(bad_data, "train.storage_path=" + str(workdir / "runs2")))
    keys = ["train/loss", "val/loss", "val/presence/accuracy", "val/macro_f1"]
    for h_again, h_first in zip(again.history, short_run.history, strict=True):
        assert [h_again[k] for k in keys] == pytest.approx([h_first[k] for k in keys], rel=1e-6)

    assert (short_run.model_version, short_run.promoted) == ("1", True)
    assert again.best_metric == pytest.approx(short_run.best_metric)
    assert (again.model_version, again.promoted) == ("2", False)
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(SHORT_MODEL, "champion").version) == "1"
    # not moved because it ties, not because the versions were scored on different splits
    first_tags, again_tags = (client.get_model_version(SHORT_MODEL, v).tags for v in ("1", "2"))
    assert first_tags[VAL_FINGERPRINT_TAG] == again_tags[VAL_FINGERPRINT_TAG]
    assert float(first_tags[METRIC_VALUE_TAG]) == pytest.approx(float(again_tags[METRIC_VALUE_TAG]))


def test_bad_rows_fail_naming_the_undecodable_file(ray_local, bad_data):
    from prism.data.table import BadRowsError
    from prism.tasks import build_task

    cfg = load_config(CIRCLES_JOB, [f"data.root={bad_data}", "backbone.img_size=64"])
    with pytest.raises(BadRowsError) as err:
        build_task(cfg).build_datasets(64)
    msg = str(err.value)
    assert "line 3: images/missing.png: file not found" in msg and "presence='oval'" in msg
    # the table check stops first; once the table is clean the image check names the bad file
    labels = pd.read_csv(bad_data / "labels.csv", dtype=str, keep_default_na=False).drop(index=[1, 2])
    clean = bad_data / "only_undecodable.csv"
    labels.to_csv(clean, index=False)
    cfg = load_config(CIRCLES_JOB, [f"data.root={bad_data}", f"data.labels={clean}", "backbone.img_size=64"])
    with pytest.raises(BadRowsError, match=r"line 2: images/00000.png: cannot decode|UnidentifiedImageError"):
        build_task(cfg).build_datasets(64)
