"""Cross-worker sums: identity alone, one SUM all_reduce under gloo, on CUDA when the backend is NCCL."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist

from prism.runtime.distributed import all_reduce_sum, collective_device
from prism.tasks.multihead.config import MultiHeadTaskConfig
from prism.tasks.multihead.metrics import MultiHeadMetrics


@pytest.fixture
def gloo_group():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_not_distributed_returns_the_tensor_itself():
    t = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert all_reduce_sum(t) is t


def test_sum_under_a_gloo_group_keeps_dtype_and_device(gloo_group, monkeypatch):
    """With one rank the sum equals the input, so the collective itself is checked: one SUM all_reduce."""
    calls = []
    real_all_reduce = dist.all_reduce

    def spy(tensor, op=dist.ReduceOp.SUM, **kwargs):
        calls.append((tensor.clone(), op))
        return real_all_reduce(tensor, op=op, **kwargs)

    monkeypatch.setattr(dist, "all_reduce", spy)
    t = torch.tensor([3.0, 4.0], dtype=torch.float64)
    out = all_reduce_sum(t)
    assert out.device == t.device and out.dtype == torch.float64
    assert torch.equal(out, t)  # world size 1: the sum is the tensor
    [(sent, op)] = calls
    assert op == dist.ReduceOp.SUM and torch.equal(sent, t) and sent.dtype == torch.float64


def test_nccl_collectives_run_on_the_current_cuda_device(monkeypatch):
    # NCCL cannot reduce CPU tensors ("No backend type associated with device type cpu"), so Prism's CPU
    # counters must be moved to the worker's GPU for the collective.
    monkeypatch.setattr(dist, "get_backend", lambda *a, **k: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert collective_device() == torch.device("cuda", 1)


def test_gloo_collectives_stay_on_cpu(gloo_group):
    assert collective_device() == torch.device("cpu")


def test_metrics_merge_goes_through_the_backend_aware_sum(monkeypatch):
    """Summable accumulators are merged across workers by one backend-aware all-reduce of their state."""
    from prism.engine import metrics as engine_metrics

    cfg = MultiHeadTaskConfig.model_validate({"heads": [{"name": "a", "classes": ["x", "y"]}]})
    acc = MultiHeadMetrics(cfg)
    acc.update({"a": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}, {"y_a": torch.tensor([0, 1])})
    seen = []

    def fake_sum(t):
        seen.append(t.clone())
        return t * 2  # as if two identical workers

    monkeypatch.setattr(engine_metrics, "is_distributed", lambda: True)
    monkeypatch.setattr(engine_metrics, "all_reduce_sum", fake_sum)
    out = engine_metrics.merged(acc, lambda: MultiHeadMetrics(cfg))
    assert len(seen) == 1 and seen[0].dtype == torch.float64
    assert out.cm["a"].tolist() == [[2.0, 0.0], [0.0, 2.0]]
    assert out.loss_sum[1].item() == 4.0 and acc.cm["a"].tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_unsummable_metrics_are_gathered_and_merged(monkeypatch):
    """Accumulators whose states cannot be summed (e.g. lists of detections) are gathered and merged."""
    from prism.engine import metrics as engine_metrics
    from prism.tasks.base import MetricAccumulator

    class Listing(MetricAccumulator):
        summable = False

        def __init__(self):
            self.items = []

        def update(self, predictions, targets):
            self.items += list(targets)

        def state(self):
            return {"items": list(self.items)}

        def merge(self, state):
            self.items += state["items"]

        def compute(self, prefix="val/"):
            return {f"{prefix}n": float(len(self.items))}

    acc = Listing()
    acc.update({}, [{"box": 1}, {"box": 2}])
    monkeypatch.setattr(engine_metrics, "is_distributed", lambda: True)
    monkeypatch.setattr(engine_metrics, "all_gather_objects", lambda s: [s, {"items": [{"box": 3}]}])
    out = engine_metrics.merged(acc, Listing)
    assert out.items == [{"box": 1}, {"box": 2}, {"box": 3}] and out.compute() == {"val/n": 3.0}

