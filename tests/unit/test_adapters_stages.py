"""prism.adapters stages on the tiny backbones: what each stage trains, its optimizer groups, the report."""

from __future__ import annotations

import pytest
import torch

from prism.adapters import apply_stage, lora_parameter_names, trainable_names_union, trainable_report
from tests.helpers.models import (
    ALL,
    FAMILIES,
    LRS,
    PLAN,
    Stage,
    TinyClassifier,
    images,
    make,
    randomize_lora_b,
    snapshot,
    trainable,
)


def expected_trainable(model: TinyClassifier, stage: Stage) -> set[str]:
    """What `stage` must train, derived from parameter names alone."""
    names = {n for n, _ in model.named_parameters()}
    heads = {n for n in names if n.startswith("heads.")}
    lora = {n for n in names if ".lora_" in n}
    base = names - heads - lora
    if stage.kind == "probe":
        return heads
    if stage.kind == "lora":
        return heads | lora
    num = model.backbone.num_blocks
    if stage.frozen_blocks is not None:
        frozen = range(stage.frozen_blocks) if isinstance(stage.frozen_blocks, int) else stage.frozen_blocks
        blocks = [i for i in range(num) if i not in frozen]
    elif stage.blocks == "all":
        return heads | lora | base
    else:
        blocks = range(num - stage.blocks, num) if isinstance(stage.blocks, int) else stage.blocks
    prefixes = tuple(f"backbone.{model.backbone.block_names[i]}." for i in blocks)
    return heads | lora | {n for n in base if n.startswith(prefixes)}


STAGES = [
    Stage("probe", {"head": 1e-2}),
    Stage("lora", {"head": 1e-2, "lora": 1e-3}, weight_decay=0.05),
    Stage("unfreeze", LRS, blocks="all"),
    Stage("unfreeze", LRS, blocks=1),
    Stage("unfreeze", LRS, blocks=[0, 2]),
    Stage("unfreeze", LRS, frozen_blocks=0),
    Stage("unfreeze", LRS, frozen_blocks=2),
    Stage("unfreeze", LRS, frozen_blocks=[1]),
]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("stage", STAGES, ids=lambda s: f"{s.kind}-{s.blocks}-frozen{s.frozen_blocks}")
def test_stage_trains_exactly_its_parameters(name, stage):
    model = make(name, targets=("attn", "mlp"))
    groups = apply_stage(model, stage)
    assert trainable(model) == expected_trainable(model, stage)

    by_name = {id(p): n for n, p in model.named_parameters()}
    optimizer_names = {"head": "head", "lora": "lora.backbone", "backbone": "backbone"}
    assert [g["name"] for g in groups] == [
        optimizer_names[k] for k in ("head", "lora", "backbone") if k in stage.lr
    ]
    for group in groups:
        assert group["lr"] == stage.lr[group["name"].partition(".")[0]]
        assert group["weight_decay"] == stage.weight_decay
        assert group["params"], group["name"]
        names = {by_name[id(p)] for p in group["params"]}
        if group["name"] == "head":
            assert names == {"heads.weight", "heads.bias"}
        elif group["name"] == "lora.backbone":
            assert names == {f"backbone.{n}" for n in lora_parameter_names(model.backbone)}
        else:
            assert names and all(".lora_" not in n and n.startswith("backbone.") for n in names)
    assert sum(len(g["params"]) for g in groups) == len(trainable(model))


@pytest.mark.parametrize("name", FAMILIES)
def test_unfreeze_without_lora_and_embeddings(name):
    model = make(name, lora=False)
    groups = apply_stage(model, Stage("unfreeze", {"head": 1e-2, "backbone": 1e-4}, blocks=1))
    assert [g["name"] for g in groups] == ["head", "backbone"]
    assert trainable(model) == expected_trainable(model, Stage("unfreeze", blocks=1))
    embeddings = {
        "dinov2_tiny": "backbone.model.pos_embed",
        "clip_tiny": "backbone.model.positional_embedding",
    }
    assert embeddings[name] not in trainable(model)
    apply_stage(model, Stage("unfreeze", {"head": 1e-2, "backbone": 1e-4}, blocks="all"))
    assert trainable(model) == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("name", FAMILIES)
def test_lora_stage_step_changes_only_lora_and_head(name):
    torch.manual_seed(0)
    model = make(name, targets=("attn", "mlp"))
    randomize_lora_b(model)
    optimizer = torch.optim.AdamW(apply_stage(model, Stage("lora", {"head": 1e-2, "lora": 1e-2})))
    before = snapshot(model)
    for _ in range(2):
        optimizer.zero_grad()
        model(images(model)).square().mean().backward()
        optimizer.step()
    with torch.no_grad():
        model(images(model, seed=1))  # forwards must not touch base weights either
    after = snapshot(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == expected_trainable(model, Stage("lora"))
    assert set(before) == set(after)  # same names: no parameter re-created or renamed


@pytest.mark.parametrize("name", FAMILIES)
def test_unfreeze_step_trains_base_weights_of_adapted_blocks(name):
    """Attention base weights of LoRA blocks must get gradients (peft's MHA LoRA layer would detach them)."""
    torch.manual_seed(0)
    model = make(name, targets=("attn",))
    randomize_lora_b(model)
    stage = Stage("unfreeze", {"head": 1e-2, "lora": 1e-2, "backbone": 1e-2}, blocks=1)
    optimizer = torch.optim.SGD(apply_stage(model, stage))
    before = snapshot(model)
    model(images(model)).square().mean().backward()
    optimizer.step()
    after = snapshot(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    attn_base = {
        "dinov2_tiny": "backbone.model.blocks.2.attn.qkv.base_layer.weight",
        "clip_tiny": "backbone.model.transformer.resblocks.2.attn.base_layer.in_proj_weight",
    }[name]
    assert attn_base in changed
    assert changed == expected_trainable(model, stage)  # one SGD step moves every trainable parameter


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        (Stage("finetune", {"head": 1e-2}), "unknown kind 'finetune'; valid kinds: probe, lora, unfreeze"),
        (Stage("probe", {"lora": 1e-3}), r"stage 'probe' \(probe\) .* no lr for \['head'\]"),
        (Stage("lora", {"head": 1e-2}, name="adapt"), r"stage 'adapt' \(lora\) .* no lr for \['lora'\]"),
        (Stage("unfreeze", {"head": 1e-2, "lora": 1e-3}), r"no lr for \['backbone'\]"),
        (Stage("unfreeze", {"head": 1e-2, "backbone": 1e-4}), r"no lr for \['lora'\]"),
        (Stage("unfreeze", LRS, blocks=0), "blocks=0 is out of range"),
        (Stage("unfreeze", LRS, blocks=4), r"use 1\.\.3"),
        (Stage("unfreeze", LRS, blocks=[3]), r"block indices in 0\.\.2"),
        (Stage("unfreeze", LRS, blocks=[]), "non-empty list"),
        (Stage("unfreeze", LRS, blocks="last"), "use 'all', an int"),
    ],
)
def test_bad_stages_raise(stage, message):
    model = make("dinov2_tiny")
    with pytest.raises(ValueError, match=message):
        apply_stage(model, stage)


def test_lora_stage_without_lora_says_configure_lora():
    with pytest.raises(ValueError, match="no LoRA adapters; configure lora"):
        apply_stage(make("clip_tiny", lora=False), Stage("lora", {"head": 1e-2, "lora": 1e-3}))


@pytest.mark.parametrize("name", FAMILIES)
def test_trainable_names_union_over_a_plan(name):
    model = make(name, last_k=2)
    plan = PLAN
    apply_stage(model, plan[0])
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    union = trainable_names_union(model, plan)
    assert union == expected_trainable(model, plan[2])
    lora = {f"backbone.{n}" for n in lora_parameter_names(model.backbone)}
    assert lora <= union and {"heads.weight", "heads.bias"} <= union
    assert not any(model.backbone.block_names[0] in n for n in union)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    with pytest.raises(ValueError, match="no lr"):
        trainable_names_union(model, [*plan, Stage("probe", {})])
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


# ---------------------------------------------------------------------------------------------- report
def test_trainable_report_counts_groups():
    model = make("dinov2_tiny", last_k=1)
    apply_stage(model, Stage("lora", {"head": 1e-2, "lora": 1e-3}))
    report = trainable_report(model)
    lines = {line.split()[0]: line.split() for line in report.splitlines()}
    n_lora = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    total = sum(p.numel() for p in model.parameters())
    assert lines["head"][1:3] == ["2/2", "147"]
    assert lines["lora.backbone"][1:3] == ["4/4", f"{n_lora:,}"]
    assert lines["backbone"][1] == "0/" + str(len(list(model.parameters())) - 6)
    assert lines["total"][2] == f"{n_lora + 147:,}"
    assert f"of {total:,} parameters" in report
    assert lines["lora.backbone"][3] == f"{100 * n_lora / total:.2f}%"


@pytest.mark.parametrize(("stage", "message"), [
    (Stage("unfreeze", LRS, frozen_blocks=3), r"frozen_blocks=3 is out of range; the backbone has 3 blocks"),
    (Stage("unfreeze", LRS, frozen_blocks=[0, 1, 2]), r"leaving at least one block to train"),
    (Stage("unfreeze", LRS, frozen_blocks=[5]), r"block indices in 0\.\.2"),
    (Stage("unfreeze", LRS, blocks=1, frozen_blocks=1), r"not both"),
])
def test_bad_frozen_blocks_raise(stage, message):
    with pytest.raises(ValueError, match=message):
        apply_stage(make("dinov2_tiny"), stage)


def test_frozen_blocks_keep_the_embeddings_frozen():
    model = make("dinov2_tiny")
    apply_stage(model, Stage("unfreeze", LRS, frozen_blocks=0))
    assert "backbone.model.pos_embed" not in trainable(model)
    assert {n for n in trainable(model) if n.startswith("backbone.model.blocks.")} == {
        n for n, _ in model.named_parameters() if n.startswith("backbone.model.blocks.")}
