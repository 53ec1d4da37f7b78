"""Which autocast dtype ``train.amp`` gives per device (CUDA cases use a fake device: no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from prism.engine.precision import autocast, resolve_amp

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("auto", None), ("off", None), ("fp16", None), ("bf16", torch.bfloat16)],  # explicit bf16 is honoured
)
def test_cpu(mode, expected):
    assert resolve_amp(mode, CPU) is expected


@pytest.mark.parametrize(
    ("mode", "bf16_ok", "expected"),
    [("auto", True, torch.bfloat16), ("auto", False, torch.float16), ("bf16", False, torch.bfloat16),
     ("fp16", True, torch.float16), ("off", True, None)],
)
def test_cuda(monkeypatch, mode, bf16_ok, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    assert resolve_amp(mode, torch.device("cuda", 0)) is expected


def test_cpu_bf16_autocast_runs_linear_layers_in_bf16():
    layer = torch.nn.Linear(8, 4)
    with autocast(CPU, resolve_amp("bf16", CPU)):
        y = layer(torch.randn(2, 8))
    assert y.dtype == torch.bfloat16
    with autocast(CPU, resolve_amp("auto", CPU)):
        assert layer(torch.randn(2, 8)).dtype == torch.float32
