"""Training's validation scores what is served: the same TTA views and the same probabilities."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prism.config import JobConfig
from prism.inference.evaluate import evaluate
from prism.inference.predictor import Predictor
from prism.engine.inputs import apply_view, to_model_input
from prism.tasks.multihead.task import MultiHeadTask

SIZE = 14
HEADS = [{"name": "presence", "classes": ["yes", "maybe", "no"]},
         {"name": "closure", "classes": ["closed", "open"], "only_when": {"presence": ["yes", "maybe"]}}]


class TinyHeads(nn.Module):
    """``(B, 3, S, S)`` → ``{"presence": (B, 3), "closure": (B, 2)}``: linear over the flattened pixels,
    so a flipped image gives other logits."""

    def __init__(self):
        super().__init__()
        self.presence = nn.Linear(3 * SIZE * SIZE, 3)
        self.closure = nn.Linear(3 * SIZE * SIZE, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = x.flatten(1)
        return {"presence": 4 * self.presence(flat), "closure": 4 * self.closure(flat)}


@pytest.fixture
def setup():
    cfg = JobConfig.model_validate({
        "task": {"name": "multihead", "heads": HEADS, "tta": ["hflip", "rot90"], "label_smoothing": 0.1},
        "stages": [{"kind": "probe", "epochs": 1, "lr": {"head": 1e-3}}],
        "backbone": {"name": "dinov2_tiny", "img_size": SIZE},
    })
    torch.manual_seed(0)
    task, model = MultiHeadTask(cfg), TinyHeads().eval()
    images = torch.randint(0, 256, (6, SIZE, SIZE, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x = to_model_input(images, task.mean, task.std)
    targets = {"y_presence": torch.tensor([0, 1, 2, 0, 2, 1]), "y_closure": torch.tensor([1, 0, -1, 0, -1, -1])}
    return task, model, images, x, targets


@pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`:DeprecationWarning")  # Ray Serve's
def test_validation_scores_the_probabilities_predict_and_serve_return_by_default(setup):
    from prism.serve.settings import ServeSettings

    task, model, images, x, targets = setup
    default = inspect.signature(task.validation_step).parameters["tta"].default
    assert default is ServeSettings().tta is inspect.signature(Predictor.predict).parameters["tta"].default
    assert inspect.signature(evaluate).parameters["tta"].default is default
    outputs, _ = task.validation_step(model, x, targets)
    served = Predictor(task.cfg, task, model).predict_arrays(images.numpy())  # the predictor's defaults
    for h in task.tcfg.heads:
        probs = np.array([[r[h.name]["probabilities"][c] for c in h.classes] for r in served])
        np.testing.assert_allclose(outputs[h.name].numpy(), probs, atol=1e-6)
    with torch.no_grad():
        raw = model(x)
    assert not torch.allclose(outputs["presence"], raw["presence"].softmax(-1), atol=1e-3)  # TTA changes them


def test_tta_probabilities_are_the_mean_over_views(setup):
    task, model, _, x, _ = setup
    views = ["identity", "hflip", "rot90"]
    assert task.tta_views(True) == views and task.tta_views(False) == ["identity"]
    with torch.no_grad():
        mean = {k: torch.stack([model(apply_view(x, op))[k].softmax(-1) for op in views]).mean(0)
                for k in ("presence", "closure")}
    outputs, _ = task.validation_step(model, x, setup[4])
    for k, v in task.infer(model, x, tta=True).items():
        torch.testing.assert_close(v, mean[k], atol=1e-6, rtol=0)
        torch.testing.assert_close(outputs[k], mean[k], atol=1e-6, rtol=0)


def test_validation_loss_is_the_training_loss_of_what_is_scored(setup):
    task, model, _, x, targets = setup
    _, loss = task.validation_step(model, x, targets, tta=True)
    mean = task.infer(model, x, tta=True)
    ref = F.cross_entropy(mean["presence"].log(), targets["y_presence"], label_smoothing=0.1)
    valid = targets["y_closure"] != -1
    ref = ref + F.cross_entropy(mean["closure"][valid].log(), targets["y_closure"][valid], label_smoothing=0.1)
    assert loss == pytest.approx(float(ref), rel=1e-5)
    # without TTA: exactly today's validation (softmax of the raw logits, loss of the raw logits)
    outputs, raw_loss = task.validation_step(model, x, targets, tta=False)
    with torch.no_grad():
        logits = model(x)
    assert raw_loss == pytest.approx(float(task.loss(logits, targets)[0]), rel=1e-5)
    torch.testing.assert_close(outputs["presence"], logits["presence"].softmax(-1), atol=1e-6, rtol=0)
