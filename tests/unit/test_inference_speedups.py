"""Inference runs as fast as the model allows: mixed precision in ``predict_batch``, LoRA merged for prediction.

``bench/model_flops.py`` measures both; these tests pin the behaviour on the tiny DINOv2 backbone.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prism.adapters import has_lora, merge_lora
from prism.engine.predict import predict_batch
from prism.inference.bundle import load_bundle
from tests.helpers.bundles import build_bundle


@pytest.fixture
def bundle(tmp_path):
    """A bundle of the circles job (tiny backbone, 64 px) whose LoRA and heads are non-trivial."""
    build_bundle(tmp_path, std=0.05)
    return tmp_path


def _head_output_dtypes(model: nn.Module) -> list[torch.dtype]:
    """Records the output dtype of every head Linear while the returned list is alive (hooks stay on)."""
    seen: list[torch.dtype] = []
    for m in model.heads.modules():
        if isinstance(m, nn.Linear):
            m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("amp", [torch.bfloat16, None])
def test_predictions_run_in_the_jobs_mixed_precision(bundle, monkeypatch, amp):
    """The engine (predict_batch) asks resolve_amp for the job's train.amp on the inputs' device and runs the
    task's predictions under that autocast (bf16 on a CUDA device; here forced on CPU); the task itself
    applies none, and returns float32 probabilities either way."""
    from prism.engine import predict as predict_module

    cfg, task, model = load_bundle(bundle)
    asked = []

    def fake_resolve_amp(mode, device):
        asked.append((mode, torch.device(device).type))
        return amp

    monkeypatch.setattr(predict_module, "resolve_amp", fake_resolve_amp)
    seen = _head_output_dtypes(model)
    probs = predict_batch(task, model, {"image": torch.randn(2, 3, 64, 64)}, tta=True, amp=cfg.train.amp)
    assert asked == [(cfg.train.amp, "cpu")]
    assert set(seen) == {amp or torch.float32}
    for p in probs.values():
        assert p.dtype == torch.float32
        torch.testing.assert_close(p.sum(-1), torch.ones(2), atol=1e-3, rtol=0)


def test_predictions_on_cpu_stay_float32(bundle):
    _, task, model = load_bundle(bundle)
    seen = _head_output_dtypes(model)
    predict_batch(task, model, {"image": torch.randn(2, 3, 64, 64)})
    assert seen and set(seen) == {torch.float32}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_predictions_on_cuda_use_autocast(bundle):
    _, task, model = load_bundle(bundle, device="cuda")
    seen = _head_output_dtypes(model)
    probs = predict_batch(task, model, {"image": torch.randn(2, 3, 64, 64, device="cuda")})
    assert set(seen) <= {torch.bfloat16, torch.float16} and seen
    assert all(p.dtype == torch.float32 for p in probs.values())


def _zero_lora_b(model: nn.Module) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.zero_()


def test_merged_bundle_model_predicts_like_the_adapted_one(bundle):
    """Folding LoRA into the weights at load time (what a predictor should run) keeps predictions to 1e-5
    and leaves no peft layer, so no adapted Linear runs its extra low-rank matmuls."""
    _, task, model = load_bundle(bundle)
    assert has_lora(model)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    adapted = predict_batch(task, model, {"image": x}, tta=True)
    _, _, without = load_bundle(bundle)
    _zero_lora_b(without)
    base = predict_batch(task, without, {"image": x}, tta=True)
    assert any(not torch.allclose(base[k], adapted[k], atol=1e-4) for k in adapted)  # LoRA changes outputs
    merged_model = merge_lora(model)
    merged = predict_batch(task, merged_model, {"image": x}, tta=True)
    assert not has_lora(merged_model)
    assert not any("lora" in n for n, _ in merged_model.named_parameters())
    for k in adapted:
        torch.testing.assert_close(merged[k], adapted[k], atol=1e-5, rtol=0)


def test_predictor_model_has_lora_merged(bundle):
    """Predictor.from_bundle merges by default (merge=False keeps the peft layers) and predicts like the
    adapted model, so the merge drops nothing the adapters learned."""
    from prism.inference.predictor import Predictor

    predictor = Predictor.from_bundle(bundle, device="cpu")
    assert not has_lora(predictor.model)
    assert has_lora(Predictor.from_bundle(bundle, device="cpu", merge=False).model)
    _, task, adapted = load_bundle(bundle)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    expected = predict_batch(task, adapted, {"image": x}, tta=True)
    got = predict_batch(predictor.task, predictor.model, {"image": x}, tta=True)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], atol=1e-5, rtol=0)
