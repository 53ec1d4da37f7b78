"""Feature distillation: a frozen copy of the backbone as its weights give it, the adapted patch tokens kept
near its own (1 - cosine), on labelled and unlabelled images; unlabelled images add to nothing else."""

from __future__ import annotations

import pytest
import torch

from prism.adapters import apply_stage
from prism.config import JobConfig
from prism.engine.inputs import model_inputs
from prism.engine.model import build_model
from prism.tasks import task_class


@pytest.fixture()
def distilled():
    raw = task_class("segment").example_job()
    raw["task"]["loss"] = {"distill_weight": 0.5, "align_weight": 0.1}
    cfg = JobConfig.model_validate(raw)
    task = task_class("segment")(cfg)
    torch.manual_seed(0)
    return cfg, task, build_model(cfg, task)


def forward(model, task, batch):
    inputs, targets = task.collate_fn()(batch)
    return model(model_inputs(inputs, "cpu", model.backbone.mean, model.backbone.std)), targets


def test_the_teacher_is_the_unadapted_backbone_and_only_the_student_learns(distilled):
    cfg, task, model = distilled
    groups = apply_stage(model, cfg.stages[-1])  # lora: heads + backbone LoRA train
    model.train()
    out, targets = forward(model, task, task.example_batch(2, seed=0))
    _, parts = task.loss(out, targets)
    assert parts["distill"] == pytest.approx(0.0, abs=1e-6)  # LoRA's B starts at 0: student == teacher
    with torch.no_grad():
        for n, p in model.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    out, targets = forward(model, task, task.example_batch(2, seed=0))
    loss, parts = task.loss(out, targets)
    assert parts["distill"] > 1e-4
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.backbone.named_parameters()
               if "lora_B" in n)
    teacher = model.heads.frozen["teacher"]
    assert not any(p.requires_grad or p.grad is not None for p in teacher.parameters())
    frozen = {id(p) for p in teacher.parameters()}
    assert frozen and not any(id(p) in frozen for g in groups for p in g["params"])  # in no optimiser group
    model.eval()
    with torch.no_grad():
        assert "teacher_patches" not in forward(model, task, task.example_batch(1, seed=0))[0]  # inference: no cost


def test_unlabelled_images_add_to_distillation_only(distilled):
    cfg, task, model = distilled
    with torch.no_grad():
        for n, p in model.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.train()
    batch = task.example_batch(2, seed=0)
    batch["mask"][:] = 255  # unlabelled: every pixel void
    out, targets = forward(model, task, batch)
    loss, parts = task.loss(out, targets)
    assert parts["bce"] == 0 and parts["dice"] == 0 and "align" not in parts
    assert loss.item() == pytest.approx(0.5 * parts["distill"], rel=1e-6) and parts["distill"] > 0


def test_the_unlabelled_folder_joins_the_training_rows(tmp_path):
    from PIL import Image

    from prism.config import load_config
    from prism.data.voc_datasets import voc_split
    from prism.tasks.segment.batches import DecodeSegmentation
    from tests.conftest import ROOT

    (tmp_path / "extra" / "sub").mkdir(parents=True)
    for name in ("a.jpg", "sub/b.png"):
        Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "extra" / name)
    cfg = load_config(ROOT / "jobs" / "shapes_textseg.yaml", [f"data.synthetic.cache_dir={tmp_path / 'data'}",
                                                             "data.synthetic.n=10",
                                                             f"data.voc.unlabelled={tmp_path / 'extra'}"])
    train, val = voc_split(cfg)
    extra = train.rows[train.rows["mask"] == ""]
    assert sorted(extra["id"]) == ["unlabelled/a", "unlabelled/sub/b"]
    assert not (val.rows["mask"] == "").any()  # never validated on
    batch = DecodeSegmentation(32, "clip_tiny", train=True)({k: extra[k].to_numpy() for k in extra.columns})
    assert (batch["mask"] == 255).all() and batch["image"].shape == (2, 32, 32, 3)
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image .* under"):
        voc_split(cfg.model_copy(update={"data": cfg.data.model_copy(update={"voc": cfg.data.voc.model_copy(
            update={"unlabelled": empty})})}))
