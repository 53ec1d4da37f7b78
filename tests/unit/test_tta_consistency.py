"""Training's validation scores what is served: the same TTA views and the same probabilities."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prism.config import JobConfig
from prism.engine.inputs import to_model_input
from prism.engine.loop import _evaluate
from prism.engine.predict import predict_batch
from prism.inference.evaluate import evaluate
from prism.inference.predictor import Predictor
from prism.tasks.multihead.task import MultiHeadTask
from prism.tasks.views import apply_view
from tests.helpers.models import Normalisation

SIZE = 14
HEADS = [{"name": "presence", "classes": ["yes", "maybe", "no"]},
         {"name": "closure", "classes": ["closed", "open"], "only_when": {"presence": ["yes", "maybe"]}}]



class TinyHeads(nn.Module):
    """``{"image": (B, 3, S, S)}`` → ``{"presence": (B, 3), "closure": (B, 2)}``: linear over the flattened
    pixels, so a flipped image gives other logits."""

    def __init__(self):
        super().__init__()
        self.backbone = Normalisation()
        self.presence = nn.Linear(3 * SIZE * SIZE, 3)
        self.closure = nn.Linear(3 * SIZE * SIZE, 2)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        flat = inputs["image"].flatten(1)
        return {"presence": 4 * self.presence(flat), "closure": 4 * self.closure(flat)}


class Shard:
    """A Ray Train dataset shard of one numpy batch: ``iter_torch_batches`` runs the task's collate class."""

    def __init__(self, batch: dict[str, np.ndarray]):
        self.batch = batch

    def iter_torch_batches(self, batch_size, collate_fn, device, **kwargs):
        yield collate_fn(self.batch)


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
    x = to_model_input(images, model.backbone.mean, model.backbone.std)
    targets = {"y_presence": torch.tensor([0, 1, 2, 0, 2, 1]), "y_closure": torch.tensor([1, 0, -1, 0, -1, -1])}
    return task, model, images, x, targets


def validation(task, model, images, targets, tta=True):
    """What the train loop's validation computes on one batch: (the merged accumulator, its metrics)."""
    batch = {"image": images.numpy(), **{k: v.numpy() for k, v in targets.items()}}
    cfg = task.cfg
    acc = _evaluate(task, model, Shard(batch), cfg) if tta else None
    return acc, (acc.compute("val/") if acc else None)


@pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`:DeprecationWarning")  # Ray Serve's
def test_validation_scores_the_probabilities_predict_and_serve_return_by_default(setup):
    from prism.serve.settings import ServeSettings

    task, model, images, x, targets = setup
    assert ServeSettings().tta is True and Predictor(task.cfg, task, model).options().tta is True
    assert inspect.signature(evaluate).parameters["tta"].default is True
    acc, metrics = validation(task, model, images, targets)
    outputs = predict_batch(task, model, {"image": x}, tta=True)
    served = Predictor(task.cfg, task, model).predict(list(images.numpy()))  # the predictor's defaults
    for h in task.tcfg.heads:
        probs = np.array([[r[h.name]["probabilities"][c] for c in h.classes] for r in served])
        np.testing.assert_allclose(outputs[h.name].numpy(), probs, atol=1e-6)
        y = targets[f"y_{h.name}"]
        keep = y != -1
        expected = (outputs[h.name].argmax(-1)[keep] == y[keep]).float().mean()
        assert metrics[f"val/{h.name}/accuracy"] == pytest.approx(float(expected))  # scored on those
    with torch.no_grad():
        raw = model({"image": x})
    assert not torch.allclose(outputs["presence"], raw["presence"].softmax(-1), atol=1e-3)  # TTA changes them


def test_tta_probabilities_are_the_mean_over_views(setup):
    task, model, _, x, _ = setup
    views = ["identity", "hflip", "rot90"]
    assert task.tta_views(True) == views and task.tta_views(False) == ["identity"]
    with torch.no_grad():
        mean = {k: torch.stack([model({"image": apply_view(x, op)})[k].softmax(-1) for op in views]).mean(0)
                for k in ("presence", "closure")}
    for k, v in predict_batch(task, model, {"image": x}, tta=True).items():
        torch.testing.assert_close(v, mean[k], atol=1e-6, rtol=0)


def test_validation_loss_is_the_training_loss_of_what_is_scored(setup):
    task, model, images, x, targets = setup
    _, metrics = validation(task, model, images, targets)
    mean = predict_batch(task, model, {"image": x}, tta=True)
    ref = F.cross_entropy(mean["presence"].log(), targets["y_presence"], label_smoothing=0.1)
    valid = targets["y_closure"] != -1
    ref = ref + F.cross_entropy(mean["closure"][valid].log(), targets["y_closure"][valid], label_smoothing=0.1)
    assert metrics["val/loss"] == pytest.approx(float(ref), rel=1e-5)
    # without TTA, the accumulator's loss of the raw model's probabilities is the training loss of its logits
    acc = task.metrics()
    acc.update(predict_batch(task, model, {"image": x}, tta=False), targets)
    with torch.no_grad():
        logits = model({"image": x})
    assert acc.compute()["val/loss"] == pytest.approx(float(task.loss(logits, targets)[0]), rel=1e-5)
