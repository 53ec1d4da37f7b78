"""prism.adapters safetensors I/O on the tiny backbones: round trips, key and shape checks, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prism.adapters import (
    adapted_state_dict,
    add_lora,
    load_adapted,
    load_lora,
    save_adapted,
    save_lora,
    trainable_names_union,
)
from tests.helpers.models import ALL, FAMILIES, PLAN, TinyClassifier, create, images, make, randomize_lora_b


@pytest.mark.parametrize("name", ALL)
def test_adapted_weights_round_trip_into_a_fresh_model(name, tmp_path):
    torch.manual_seed(0)
    model = make(name, targets=("attn", "mlp"), last_k=2)
    randomize_lora_b(model)
    plan = PLAN
    names = trainable_names_union(model, plan)
    with torch.no_grad():  # make the unfrozen base weights differ from a fresh build
        for n, p in model.named_parameters():
            if n in names and ".lora_" not in n:
                p.add_(0.01)
    path = save_adapted(tmp_path / "adapted.safetensors", model, names, metadata={"run": "r1"})

    fresh = make(name, lora=False)
    result = load_adapted(path, fresh)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert result.metadata["run"] == "r1" and result.metadata["prism.backbone"] == name
    assert fresh.backbone.lora_config == model.backbone.lora_config
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(images(model)), model(images(model)))


@pytest.mark.parametrize("name", FAMILIES)
def test_lora_only_round_trip(name, tmp_path):
    backbone = add_lora(create(name), rank=2, alpha=4, targets=("attn", "mlp"), last_k=1)
    randomize_lora_b(backbone)
    path = save_lora(tmp_path / "lora.safetensors", backbone)
    fresh = load_lora(path, create(name))
    x = torch.randn(2, 3, backbone.img_size, backbone.img_size)
    with torch.no_grad():
        assert torch.equal(fresh(x)["cls"], backbone(x)["cls"])
    with pytest.raises(ValueError, match="LoRA settings differ"):
        load_lora(path, add_lora(create(name), rank=4, targets=("attn", "mlp"), last_k=1))
    with pytest.raises(RuntimeError, match="call add_lora first"):
        save_lora(tmp_path / "none.safetensors", create(name))


def test_load_adapted_names_missing_unexpected_and_shape(tmp_path):
    model = make("dinov2_tiny", last_k=1)
    names = {n for n, _ in model.named_parameters() if n.startswith("heads.") or ".lora_" in n}

    path = save_adapted(tmp_path / "a.safetensors", model, names - {"heads.bias"})
    with pytest.raises(ValueError, match=r"missing keys .*heads\.bias"):
        load_adapted(path, make("dinov2_tiny", lora=False))
    result = load_adapted(path, make("dinov2_tiny", lora=False), strict=False)
    assert result.missing_keys == ["heads.bias"]

    other = make("dinov2_tiny", last_k=1)
    other.extra = nn.Linear(2, 2)
    path = save_adapted(tmp_path / "b.safetensors", other, names | {"extra.weight"})
    with pytest.raises(ValueError, match=r"unexpected keys .*extra\.weight"):
        load_adapted(path, make("dinov2_tiny", lora=False))

    wide = make("dinov2_tiny", last_k=1)
    wide.heads = nn.Linear(wide.backbone.embed_dim, 5)
    path = save_adapted(tmp_path / "c.safetensors", wide, names)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_adapted(path, make("dinov2_tiny", lora=False))


def test_save_handles_tied_and_non_contiguous_tensors(tmp_path):
    model = make("dinov2_tiny", lora=False)
    model.tied = nn.Linear(3, 48, bias=False)
    model.tied.weight = nn.Parameter(model.heads.weight.t())  # a non-contiguous view sharing storage
    model.tied_again = model.tied  # the same parameter under a second name is deduplicated by torch
    names = {"heads.weight", "heads.bias", "tied.weight"}
    path = save_adapted(tmp_path / "t.safetensors", model, names)
    fresh = make("dinov2_tiny", lora=False)
    fresh.tied = nn.Linear(3, 48, bias=False)
    load_adapted(path, fresh)
    assert torch.equal(fresh.tied.weight, model.heads.weight.t())
    assert torch.equal(fresh.heads.weight, model.heads.weight)


def test_io_input_errors(tmp_path):
    model = make("dinov2_tiny", lora=False)
    with pytest.raises(ValueError, match="no parameter"):
        adapted_state_dict(model, {"heads.nope"})
    with pytest.raises(ValueError, match="str to str"):
        save_adapted(tmp_path / "m.safetensors", model, {"heads.bias"}, metadata={"epoch": 3})
    with pytest.raises(ValueError, match="no adapter file"):
        load_adapted(tmp_path / "absent.safetensors", model)
    other_seed = TinyClassifier(create("dinov2_tiny", seed=1))
    path = save_adapted(tmp_path / "h.safetensors", other_seed, {"heads.weight", "heads.bias"})
    with pytest.raises(ValueError, match="trained on base weights"):
        load_adapted(path, model)
    assert not torch.equal(model.heads.weight, other_seed.heads.weight)  # the refused load copied nothing
    result = load_adapted(path, model, strict=False)  # strict=False loads them anyway
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert torch.equal(model.heads.weight, other_seed.heads.weight)
    assert torch.equal(model.heads.bias, other_seed.heads.bias)
