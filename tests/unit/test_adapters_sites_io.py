"""LoRA head sites: save/load round-trips and merge of every site, on the tiny segmenter
(`tests.helpers.segmenter`)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from prism.adapters import (
    add_head_lora,
    has_lora,
    load_adapted,
    lora_sites,
    merge_lora,
    parameter_groups,
    save_adapted,
    trainable_names_union,
)
from tests.helpers.models import Stage, randomize_lora_b
from tests.helpers.segmenter import ATTN, build, images, members

# --------------------------------------------------------------------------------------------- save / load
PLAN = [
    Stage("probe", {"head": 1e-2}),
    Stage("lora", {"head": 1e-2, "lora": 1e-3, "head.out": 1e-3}),
]


def test_every_site_round_trips_into_a_fresh_model(tmp_path):
    model = build()
    randomize_lora_b(model)
    names = trainable_names_union(model, PLAN)
    assert members(model, "head.out") <= names and not members(model, "head.decoder") & names
    with torch.no_grad():
        model.heads.proj.base_layer.weight.add_(0.1)  # a trained head-site base differs from a fresh build
    path = save_adapted(tmp_path / "a.safetensors", model, names)

    fresh = build(backbone_lora=False, sites=())
    result = load_adapted(path, fresh)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert json.loads(result.metadata["prism.lora_sites"]) == model.heads.lora_sites
    assert fresh.heads.lora_sites == model.heads.lora_sites
    x = images()
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
        baseline = build()(x)
        assert not torch.allclose(fresh(x), baseline, atol=1e-3)  # what was loaded matters
        for site in ("decoder", "out", "backbone"):  # each site's LoRA reaches the output
            changed = build()
            changed.load_state_dict(model.state_dict())
            for n, p in changed.named_parameters():
                if ".lora_B." in n and n.startswith(lora_sites(changed)[site]):
                    p.add_(0.5)
            assert not torch.allclose(changed(x), fresh(x), atol=1e-4), site

    load_adapted(path, build())  # sites already present with the same settings: no injection needed


def test_load_checks_head_site_keys_and_settings(tmp_path):
    model = build()
    names = {n for n, _ in model.named_parameters() if n.startswith("heads.") or ".lora_" in n}
    partial = names - {"heads.decoder.attn.q_proj.lora_A.default.weight"}
    path = save_adapted(tmp_path / "p.safetensors", model, partial)
    with pytest.raises(ValueError, match=r"missing keys .*heads\.decoder\.attn\.q_proj\.lora_A"):
        load_adapted(path, build(backbone_lora=False, sites=()))
    assert load_adapted(path, build(), strict=False).missing_keys == [
        "heads.decoder.attn.q_proj.lora_A.default.weight"
    ]

    path = save_adapted(tmp_path / "a.safetensors", model, names)
    other = build(sites=())
    add_head_lora(other, "decoder", "decoder", ATTN, rank=4, alpha=4)
    with pytest.raises(ValueError, match=r"head-site settings differ .*'decoder': \{'rank': \(2, 4\)\}"):
        load_adapted(path, other)
    elsewhere = build(sites=())
    elsewhere.heads.proj = nn.Identity()  # the recorded site's module is gone
    with pytest.raises(
        ValueError, match=r"cannot inject the recorded LoRA head sites .*'proj'.*Linear modules"
    ):
        load_adapted(path, elsewhere)


def test_file_without_head_site_metadata_still_loads(tmp_path):
    """A file as written before head sites: heads + backbone LoRA, only prism.lora_config metadata."""
    model = build(sites=())
    randomize_lora_b(model)
    tensors = {
        n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("heads.") or ".lora_" in n
    }
    path = tmp_path / "old.safetensors"
    save_file(tensors, str(path), metadata={"prism.lora_config": json.dumps(model.backbone.lora_config)})
    fresh = build(backbone_lora=False, sites=())
    assert load_adapted(path, fresh).missing_keys == []
    assert lora_sites(fresh) == {"backbone": "backbone."}
    with torch.no_grad():
        assert torch.equal(fresh(images()), model(images()))


# --------------------------------------------------------------------------------------------- merge
def test_merge_folds_every_site():
    model = build().eval()
    randomize_lora_b(model)
    x = images()
    with torch.no_grad():
        unmerged = model(x)
    records = dict(model.heads.lora_sites)
    assert merge_lora(model) is model
    with torch.no_grad():
        torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=0)
    assert not has_lora(model)
    assert model.heads.lora_sites is None and model.heads.merged_lora_sites == records
    assert lora_sites(model) == {}
    reference = build(backbone_lora=False, sites=())
    assert sorted(n for n, _ in model.named_parameters()) == sorted(
        n for n, _ in reference.named_parameters()
    )
    assert list(parameter_groups(model)) == ["head", "backbone"]
