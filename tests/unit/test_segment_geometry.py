"""Point and box prompts: their tokens are SAM's own, the training jitter draws them from the masks, and a
model trained with them answers from the text alone with every slot empty."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prism.config import JobConfig
from prism.engine.inputs import model_inputs
from prism.engine.model import build_model
from prism.tasks import task_class
from prism.tasks.segment.geometry import geometry_tokens, jitter_prompts
from prism.tasks.segment.sam_parts import build_prompt_encoder


def test_geometry_tokens_are_sams_point_and_box_embeddings():
    torch.manual_seed(0)
    pe = build_prompt_encoder("tiny", grid=8, image_size=32)
    points = torch.rand(3, 4, 2) * 32
    labels = torch.tensor([[1, 0, -1, 1], [0, 0, 1, -1], [-1, -1, -1, -1]])
    with torch.no_grad():
        torch.testing.assert_close(geometry_tokens(pe, points, labels),
                                   pe._embed_points(points, labels.float(), pad=False))
        boxes = torch.tensor([[2.0, 3.0, 20.0, 25.0], [0.0, 0.0, 31.0, 31.0]])
        torch.testing.assert_close(geometry_tokens(pe, boxes.view(2, 2, 2), torch.tensor([[2, 3]] * 2)),
                                   pe._embed_boxes(boxes))


def test_jitter_draws_points_inside_the_object_and_boxes_around_it():
    masks = np.zeros((3, 32, 32), np.uint8)
    masks[0, 5:15, 8:20] = 1
    masks[1, 20:30, 2:6] = 1
    masks[1, :2] = 255
    rng = np.random.default_rng(0)
    points, labels = jitter_prompts(masks, points=3, point_prob=1.0, box_prob=1.0, box_jitter=0.1, rng=rng)
    assert points.shape == (3, 5, 2) and labels.shape == (3, 5)
    for i in (0, 1):
        ys, xs = np.nonzero(masks[i] == 1)
        pos = labels[i] == 1
        assert 1 <= pos.sum() <= 3
        for x, y in points[i][pos]:
            assert masks[i, int(y), int(x)] == 1  # on the object, never on void or background
        assert list(labels[i, 3:]) == [2, 3]
        (x0, y0), (x1, y1) = points[i, 3:]
        w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        assert abs(x0 - xs.min()) <= 0.1 * w + 1e-4 and abs(y1 - ys.max()) <= 0.1 * h + 1e-4
        assert x0 <= x1 and y0 <= y1
    assert (labels[2] == -1).all()  # an empty mask: no prompt
    _, none = jitter_prompts(masks, points=3, point_prob=0.0, box_prob=0.0, box_jitter=0.1, rng=rng)
    assert none.shape == (3, 3) and (none == -1).all()


@pytest.fixture(scope="module")
def jittered():
    raw = task_class("segment").example_job()
    raw["task"]["jitter"] = {"points": 2, "point_prob": 1.0, "box_prob": 1.0}
    cfg = JobConfig.model_validate(raw)
    task = task_class("segment")(cfg)
    torch.manual_seed(0)
    return task, build_model(cfg, task)


def test_a_jittered_batch_trains_and_text_alone_means_empty_slots(jittered, tmp_path):
    from prism.data.synth import generate_textseg
    from prism.data.voc import read_voc
    from prism.tasks.segment.batches import DecodeSegmentation

    task, model = jittered
    decode = DecodeSegmentation(task.img_size, task.tcfg.text.name, train=True, jitter=task.tcfg.jitter)
    table = read_voc(generate_textseg(tmp_path / "ts", n=2, size=48, seed=3, progress=False), None,
                     classes=task.classes)
    rows = {k: table.rows[k].to_numpy()[:4] for k in table.rows.columns}
    inputs, targets = task.collate_fn()(decode(rows))
    assert inputs["points"].shape == (4, 4, 2) and set(inputs["point_labels"].unique().tolist()) <= {-1, 1, 2, 3}
    x = model_inputs(inputs, "cpu", model.backbone.mean, model.backbone.std)
    model.train()
    loss, _ = task.loss(model(x), targets)
    loss.backward()
    assert model.heads.prompt_encoder.point_embeddings[1].weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        text_only = {k: v for k, v in x.items() if k not in ("points", "point_labels")}
        empty = {**text_only, "points": torch.zeros(4, 4, 2), "point_labels": torch.full((4, 4), -1)}
        torch.testing.assert_close(model(text_only)["masks"], model(empty)["masks"])
        assert not torch.allclose(model(x)["masks"], model(text_only)["masks"])  # the prompts change the mask
    val = DecodeSegmentation(task.img_size, task.tcfg.text.name, train=False, jitter=task.tcfg.jitter)(rows)
    assert val["points"].shape == (4, 4, 2) and (val["point_labels"] == -1).all()  # validation: text only
