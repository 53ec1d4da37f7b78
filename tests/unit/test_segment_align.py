"""The CLIP alignment loss: contrastive over the batch's prompts and every class prompt, so it is not 0 at
batch size 1 (the research version, prompts of the batch only, is), and it reaches the trained parts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prism.config import JobConfig
from prism.engine.inputs import model_inputs
from prism.engine.model import build_model
from prism.tasks import task_class
from prism.tasks.segment.align import alignment_loss


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_the_loss_ranks_the_rows_own_prompt_against_the_class_prompts():
    classes = unit([1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    text = classes[:1]  # one row, prompted by class 0
    near = alignment_loss(unit([1.0, 0.1, 0.0]), text, classes)
    far = alignment_loss(unit([0.1, 1.0, 0.0]), text, classes)
    assert 0 < near < far  # > 0 at batch size 1: the other class prompt is a negative
    # reference: the same InfoNCE written out (candidates = the two class prompts, target 0)
    logits = unit([1.0, 0.1, 0.0]) @ classes.T / 0.07
    assert near == pytest.approx(float(F.cross_entropy(logits, torch.tensor([0]))), rel=1e-6)
    # a batch-only contrast has one candidate at batch size 1: exactly 0, what this loss avoids
    assert float(F.cross_entropy(unit([0.1, 1.0, 0.0]) @ text.T / 0.07, torch.tensor([0]))) == 0.0


def test_a_prompt_outside_the_classes_is_a_candidate_of_its_own():
    classes = unit([1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    text = unit([0.0, 0.0, 1.0], [1.0, 0.0, 0.0])  # a free-text prompt, then class 0 again
    region = text.clone()
    loss = alignment_loss(region, text, classes, temperature=0.01)
    assert loss < 1e-6  # each region on its own prompt: the right one of 3 candidates (no duplicate of class 0)
    swapped = alignment_loss(region.flip(0), text, classes, temperature=0.01)
    assert swapped > 10


def test_the_segmenter_trains_with_alignment_at_batch_size_one():
    raw = task_class("segment").example_job()
    raw["task"]["loss"] = {"align_weight": 0.5}
    cfg = JobConfig.model_validate(raw)
    task = task_class("segment")(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, task)
    batch = task.example_batch(1, seed=0)
    inputs, targets = task.collate_fn()(batch)
    out = model(model_inputs(inputs, "cpu", model.backbone.mean, model.backbone.std))
    assert out["region"].shape == (1, out["text"].shape[1]) and out["class_text"].shape[0] == len(task.classes)
    loss, parts = task.loss(out, targets)
    assert parts["align"] > 0
    without = dict(cfg.task.loss.model_dump(), align_weight=0.0)
    plain, _ = task_class("segment")(cfg.model_copy(update={"task": cfg.task.model_copy(
        update={"loss": type(cfg.task.loss)(**without)})})).loss({k: v for k, v in out.items()}, targets)
    assert loss.item() == pytest.approx(plain.item() + 0.5 * parts["align"], rel=1e-5)
    loss.backward()
    heads = model.heads
    assert heads.region_proj.weight.grad.abs().sum() > 0 and heads.neck[0].weight.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in heads.frozen.parameters())
    from safetensors.torch import load

    from prism.tasks.segment.task import BUFFERS_FILE

    saved = load(task.artifacts(model)[BUFFERS_FILE])  # the class prompts' text: rebuilt from the tower, not saved
    assert saved and not any("classes" in n for n in saved) and "frozen.text.classes" not in heads.state_dict()


def test_a_bundle_with_alignment_loads_and_predicts_the_same(tmp_path):
    from prism.engine.predict import predict_batch
    from prism.inference.bundle import load_bundle, write_bundle

    raw = task_class("segment").example_job()
    raw["task"]["loss"] = {"align_weight": 0.5}
    cfg = JobConfig.model_validate(raw)
    task = task_class("segment")(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, task).eval()
    write_bundle(tmp_path, cfg, task, model, [n for n, p in model.named_parameters() if p.requires_grad])
    _, task2, model2 = load_bundle(tmp_path)
    inputs, _ = task.collate_fn()(task.example_batch(2, seed=1))
    x = model_inputs(inputs, "cpu", model.backbone.mean, model.backbone.std)
    a, b = predict_batch(task, model, x), predict_batch(task2, model2, x)
    for k in a:
        torch.testing.assert_close(b[k], a[k])
    torch.testing.assert_close(model2.heads.frozen["text"].classes, model.heads.frozen["text"].classes)


def test_alignment_off_builds_no_projection():
    cfg = JobConfig.model_validate(task_class("segment").example_job())
    model = build_model(cfg, task_class("segment")(cfg))
    assert model.heads.region_proj is None


def test_the_iou_head_learns_the_iou_its_mask_has():
    from prism.tasks.segment.task import iou_loss

    target = torch.zeros(2, 4, 4, dtype=torch.uint8)
    target[:, :2] = 1  # the top half
    target[1, 3] = 255  # void: out of the IoU
    logits = torch.full((2, 4, 4), -5.0)
    logits[0, :2] = 5.0  # exact: IoU 1
    logits[1, :1] = 5.0  # a quarter of 16 against a half: IoU 0.5
    logits[1, 3] = 5.0  # on void: not counted
    got = iou_loss(torch.tensor([0.9, 0.9]), logits, target)
    torch.testing.assert_close(got, torch.tensor([0.1 ** 2, 0.4 ** 2]))
