"""``prism predict --option key=value``: the task's request options from the command line, checked by the task."""

from __future__ import annotations

import json

from prism.cli import main
from tests.helpers.bundles import build_bundle
from tests.helpers.images import sample_images


def test_predict_takes_the_tasks_options_and_names_the_accepted_ones(tmp_path, capsys):
    bundle = build_bundle(tmp_path / "bundle").path
    images = sample_images(tmp_path / "img", n=2)
    out = tmp_path / "preds.json"
    assert main(["predict", "--model", str(bundle), *map(str, images), "--option", "top_k=1", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert len(results) == 2
    for r in results:
        for head in ("presence", "closure", "circularity"):
            assert len(r[head]["probabilities"]) == 1  # top_k=1 reached the task's postprocess
    assert main(["predict", "--model", str(bundle), str(images[0]), "--option", "colour=red"]) == 2
    err = capsys.readouterr().err
    assert "colour: Extra inputs are not permitted" in err and "task 'multihead' accepts: top_k, tta" in err
    assert main(["predict", "--model", str(bundle), str(images[0]), "--option", "top_k"]) == 2
    assert "must look like key=value" in capsys.readouterr().err


def test_predict_asks_a_segmenter_for_its_prompt_and_writes_mask_files(tmp_path, capsys):
    import torch

    from prism.config import JobConfig
    from prism.engine.model import build_model
    from prism.inference.bundle import write_bundle
    from prism.tasks import task_class

    cfg = JobConfig.model_validate(task_class("segment").example_job())
    task = task_class("segment")(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, task)
    write_bundle(tmp_path / "seg", cfg, task, model, [n for n, p in model.named_parameters() if p.requires_grad])
    images = sample_images(tmp_path / "img", n=2)
    assert main(["predict", "--model", str(tmp_path / "seg"), *map(str, images)]) == 2
    assert "give a prompt" in capsys.readouterr().err
    out = tmp_path / "masks.csv"
    assert main(["predict", "--model", str(tmp_path / "seg"), *map(str, images), "--option", "prompt=circle",
                 "--out", str(out)]) == 0
    import pandas as pd
    from PIL import Image

    frame = pd.read_csv(out)
    assert list(frame["prompt"]) == ["circle", "circle"]
    for image, mask in zip(images, frame["mask"], strict=True):
        assert Image.open(tmp_path / mask).size == Image.open(image).size  # at the image's own size


def test_train_on_a_features_job_points_to_prism_features(capsys):
    from prism.cli.main import main
    from tests.conftest import ROOT

    assert main(["train", str(ROOT / "jobs" / "faces_pca.yaml")]) == 2
    assert "task 'features' does not train; run `prism features pca" in capsys.readouterr().err


def test_evaluate_points_a_detection_model_at_coco_files(tmp_path, capsys):
    import torch

    from prism.cli.main import main
    from prism.config import JobConfig
    from prism.engine.model import build_model
    from prism.inference.bundle import write_bundle
    from prism.tasks import task_class

    cfg = JobConfig.model_validate(task_class("detection").example_job())
    task = task_class("detection")(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, task)
    write_bundle(tmp_path / "det", cfg, task, model,
                 [n for n, p in model.named_parameters() if n.startswith("heads.") or "lora_" in n])
    labels = tmp_path / "labels.csv"
    labels.write_text("image,label\na.png,x\n")
    assert main(["evaluate", "--model", str(tmp_path / "det"), "--device", "cpu", "--labels", str(labels)]) == 2
    assert "a detection model is scored on COCO files: --coco" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "det"), "--device", "cpu", "--first", "0"]) == 2
    assert "--first 0" in capsys.readouterr().err
