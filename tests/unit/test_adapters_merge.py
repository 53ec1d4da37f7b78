"""prism.adapters.merge_lora on the tiny backbones: same outputs, no LoRA left, only targets changed."""

from __future__ import annotations

import pytest
import torch

from prism.adapters import has_lora, merge_lora
from tests.helpers.models import ALL, FAMILIES, LORA_SUFFIXES, create, images, make, randomize_lora_b


@pytest.mark.parametrize("name", ALL)
def test_merge_matches_unmerged_and_removes_lora(name):
    torch.manual_seed(0)
    reference = create(name)
    model = make(name, targets=("attn", "mlp")).eval()
    x = images(model)
    with torch.no_grad():
        identity = model(x)
        randomize_lora_b(model)
        unmerged = model(x)
    assert not torch.allclose(unmerged, identity, atol=1e-3)  # the adapters do something to merge
    assert merge_lora(model) is model
    with torch.no_grad():
        merged = model(x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    assert not has_lora(model)
    assert model.backbone.lora_config is None and model.backbone.merged_lora_config["rank"] == 4
    assert sorted(n for n, _ in model.backbone.named_parameters()) == sorted(
        n for n, _ in reference.named_parameters()
    )
    assert merge_lora(model) is model  # no LoRA left: a no-op


@pytest.mark.parametrize("name", FAMILIES)
def test_merged_weights_differ_from_base_only_in_targets(name):
    reference = create(name)
    model = make(name, targets=("mlp",), last_k=1)
    randomize_lora_b(model)
    merge_lora(model)
    base = dict(reference.named_parameters())
    changed = {n for n, p in model.backbone.named_parameters() if not torch.equal(p, base[n])}
    suffixes = LORA_SUFFIXES[(reference.family, "mlp")]
    assert changed == {f"{reference.block_names[-1]}.{s}.weight" for s in suffixes}
