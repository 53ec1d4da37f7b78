"""Every registered task passes the task contract (``prism.tasks.base``) end to end, by being registered.

For each task, on its example job (a tiny backbone): engine-built model → a numpy batch through the
task's collate class → loss → backward → metrics merged from two workers' states → predictions →
postprocess → bundle written and loaded back → identical predictions → the Serve path (options, prepare,
batch) gives what the predictor gives, and the OpenAPI spec documents the task's options.
"""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from prism.adapters import apply_stage, bundle_names
from prism.config import JobConfig
from prism.engine.inputs import model_inputs, to_device, unbatch
from prism.engine.model import build_model, check_plan
from prism.engine.predict import predict_batch
from prism.inference.bundle import load_bundle, write_bundle
from prism.inference.predictor import Predictor
from prism.tasks import list_tasks, task_class
from prism.tasks.outputs import encode_result

N = 6


@pytest.fixture(scope="module", params=list_tasks())
def case(request):
    """(task, model, numpy batch) of one registered task's example job, model in its first stage."""
    cfg = JobConfig.model_validate(task_class(request.param).example_job())
    task = task_class(request.param)(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, task)
    return task, model, task.example_batch(N, seed=0)


def batches(task, batch: dict[str, np.ndarray], batch_size: int):
    """``batch`` in numpy batches of ``batch_size`` rows through the task's collate class, as
    ``iter_torch_batches(collate_fn=...)`` hands them to the train loop (that Ray passes list-of-dict
    targets through untouched is tests/integration/test_ragged_targets.py's check)."""
    collate = task.collate_fn()
    n = len(batch["image"])
    return [collate({k: v[i:i + batch_size] for k, v in batch.items()}) for i in range(0, n, batch_size)]


def device_inputs(model, inputs):
    return model_inputs(inputs, "cpu", model.backbone.mean, model.backbone.std)


def test_the_drivers_plan_check_builds_the_model_on_meta(case):
    """``run_training``'s first step: the model built on the meta device (no weights read, nothing hashed)
    and every stage checked against it."""
    task, _, _ = case
    check_plan(task.cfg, task)


def test_collate_loss_backward(case):
    task, model, batch = case
    if not task.cfg.stages:
        pytest.skip(f"task '{task.name}' does not train")
    (inputs, targets), = batches(task, batch, batch_size=N)
    assert inputs["image"].dtype == torch.uint8 and tuple(inputs["image"].shape[:1]) == (N,)
    groups = apply_stage(model, task.cfg.stages[-1])
    model.train()
    loss, parts = task.loss(model(device_inputs(model, inputs)), to_device(targets, "cpu"))
    assert loss.ndim == 0 and torch.isfinite(loss) and all(np.isfinite(v) for v in parts.values())
    loss.backward()
    for g in groups:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in g["params"]), g["name"]
    model.zero_grad(set_to_none=True)
    model.eval()


def test_two_ddp_steps_with_the_tasks_unused_parameter_setting(case, tmp_path):
    """What the train loop runs on several workers: DDP (gloo, here one process) over the model of the
    task's last stage, two steps; a task whose batches may leave head parameters out of the loss must say
    so (``ddp_unused_parameters``), else the second step stalls DDP's reducer."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    task, model, batch = case
    if not task.cfg.stages:
        pytest.skip(f"task '{task.name}' does not train")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        groups = apply_stage(model, task.cfg.stages[-1])
        ddp = DistributedDataParallel(model, find_unused_parameters=task.ddp_unused_parameters)
        optimizer = torch.optim.SGD([p for g in groups for p in g["params"]], lr=1e-4)
        (inputs, targets), = batches(task, batch, batch_size=N)
        model.train()
        for _ in range(2):
            loss, _ = task.loss(ddp(device_inputs(model, inputs)), to_device(targets, "cpu"))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        assert torch.isfinite(loss)
    finally:
        dist.destroy_process_group()
        model.zero_grad(set_to_none=True)
        model.eval()


def test_metrics_merge_across_workers(case):
    """Two workers' accumulators merged (state/merge) give the metrics of one pass over both halves."""
    task, model, batch = case
    whole, halves = task.metrics(), [task.metrics(), task.metrics()]
    for i, (inputs, targets) in enumerate(batches(task, batch, batch_size=N // 2)):
        preds = predict_batch(task, model, device_inputs(model, inputs), tta=True)
        whole.update(preds, targets)
        halves[i % 2].update(preds, targets)
    merged = task.metrics()
    for half in halves:
        merged.merge(half.state())
    got, expected = merged.compute("val/"), whole.compute("val/")
    assert got.keys() == expected.keys() and task.cfg.train.metric in expected
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, nan_ok=True), k
    # what checkpoints keep and reports draw: JSON-able, and every figure and table renders from it
    stats = json.loads(json.dumps(merged.export()))
    for name, fig in task.figures(stats).items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        assert name.endswith(".png") and buf.tell() > 0, name
    for name, table in task.tables(stats).items():
        assert name.endswith(".csv") and len(table.to_csv(index=False)) > 0, name


def test_predictions_postprocess_to_json(case):
    task, model, batch = case
    (inputs, _), = batches(task, batch, batch_size=N)
    preds = predict_batch(task, model, device_inputs(model, inputs), tta=True)
    rows = unbatch(preds, N)
    options = task.parse_options(None)
    results = [task.postprocess(p, {}, options) for p in rows]
    assert len(results) == N
    json.dumps(encode_result(results))  # JSON-able once binary outputs are encoded
    assert len(task.results_frame(results)) == N


def test_bundle_round_trip_predicts_the_same(case, tmp_path):
    task, model, batch = case
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    with torch.no_grad():  # make the saved state matter: heads, LoRA B and the heads' float buffers (a
        gen = torch.Generator().manual_seed(1)  # PCA basis, which the task's artifacts carry) off their init
        for n, p in model.named_parameters():
            if n in names:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        for _, b in heads_buffers(model):
            b.add_(torch.randn(b.shape, generator=gen) * 0.05)
    write_bundle(tmp_path, task.cfg, task, model, names)
    _, task2, model2 = load_bundle(tmp_path)
    (inputs, _), = batches(task, batch, batch_size=N)
    x = device_inputs(model, inputs)
    a, b = predict_batch(task, model.eval(), x), predict_batch(task2, model2, x)
    for k in a:
        torch.testing.assert_close(b[k], a[k])
    _, _, untrained = load_bundle(tmp_path)
    with torch.no_grad():
        for n, p in untrained.named_parameters():
            if n.startswith("heads."):
                p.zero_()
        for _, b in heads_buffers(untrained):
            b.zero_()
    c = predict_batch(task2, untrained, x)
    assert any(not torch.allclose(c[k], a[k]) for k in a), "the bundle's weights must change predictions"


def heads_buffers(model) -> list[tuple[str, torch.Tensor]]:
    """The heads' floating-point buffers (state that is not a parameter, e.g. a fitted basis); a frozen
    component's (``heads.frozen.*``, rebuilt from its source and checked by hash) are not state."""
    return [(n, b) for n, b in model.named_buffers()
            if n.startswith("heads.") and not n.startswith("heads.frozen.") and b.is_floating_point()]


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`:DeprecationWarning")  # Ray Serve's
def test_serve_path_answers_what_the_predictor_answers(case, tmp_path, monkeypatch):
    import mlflow

    from prism.serve.model import ServedModel, run_batch
    from prism.serve.schemas import predict_openapi

    task, model, batch = case
    write_bundle(tmp_path / "bundle", task.cfg, task, model, bundle_names(model, task.cfg.stages))
    files = [png(im) for im in batch["image"][:3]]
    expected = Predictor.from_bundle(tmp_path / "bundle", device="cpu").predict(files, tta=True,
                                                                                 options=task.example_options())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unused")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "unused")
    served = ServedModel(f"sqlite:///{tmp_path}/mlflow.db", device="cpu")
    try:
        asyncio.run(served.reconfigure({"model_uri": str(tmp_path / "bundle")}))
        options = served.request_options(task.example_options())
        items = [served.prepare(data, f"image_{i}", options) for i, data in enumerate(files)]
        got = run_batch(served.loaded().predictor, items)
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    assert json.dumps(encode_result(got)) == json.dumps(encode_result([
        {k: v for k, v in r.items() if k != "image"} for r in expected]))
    body = predict_openapi(task.options_class)["requestBody"]["content"]
    for field in task.options_class.model_fields:
        assert field in body["multipart/form-data"]["schema"]["properties"]
        assert field in body["application/json"]["schema"]["properties"]
