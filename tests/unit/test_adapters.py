"""prism.adapters on the tiny backbones: LoRA injection, stages, report, safetensors I/O, merging."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from prism.adapters import (
    adapted_state_dict,
    add_lora,
    apply_stage,
    build_targets,
    has_lora,
    load_adapted,
    load_lora,
    lora_parameter_names,
    merge_lora,
    save_adapted,
    save_lora,
    trainable_names_union,
    trainable_report,
    valid_target_kinds,
)
from prism.backbones import create_backbone

TIMM = ["dinov2_tiny", "dinov2_tiny_reg", "dino_tiny"]
ALL = [*TIMM, "clip_tiny"]
FAMILIES = ["dinov2_tiny", "clip_tiny"]  # one per family, for the slower tests

# Expected LoRA parameter suffixes inside a block, written out independently of prism.adapters.targets.
LORA_SUFFIXES = {
    ("timm_vit", "attn"): ["attn.qkv", "attn.proj"],
    ("timm_vit", "mlp"): ["mlp.fc1", "mlp.fc2"],
    ("open_clip", "attn"): ["attn"],  # LoRA on attn.in_proj_weight (peft ParamWrapper around attn)
    ("open_clip", "mlp"): ["mlp.c_fc", "mlp.c_proj"],
}


class M(nn.Module):
    """Backbone + a linear head on the class token: (B, 3, S, S) -> (B, 3)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.Linear(backbone.embed_dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.backbone(x)["cls"])


@dataclass
class Stage:
    kind: str
    lr: dict[str, float] = field(default_factory=dict)
    blocks: object = "all"
    weight_decay: float = 0.0
    name: str | None = None


LRS = {"head": 1e-2, "lora": 1e-3, "backbone": 1e-4}
PLAN = [
    Stage("probe", {"head": 1e-2}),
    Stage("lora", {"head": 1e-2, "lora": 1e-3}),
    Stage("unfreeze", LRS, blocks=1),
]


def create(name: str, **kwargs) -> nn.Module:
    """create_backbone, with DINOv2's LayerScale (init 1e-5) set to 1 so that the blocks visibly matter."""
    backbone = create_backbone(name, **kwargs)
    with torch.no_grad():
        for n, p in backbone.named_parameters():
            if n.endswith((".ls1.gamma", ".ls2.gamma")):
                p.fill_(1.0)
    return backbone


def make(name: str, lora: bool = True, **lora_kwargs) -> M:
    backbone = create(name)
    if lora:
        add_lora(backbone, **{"rank": 4, "alpha": 8, **lora_kwargs})
    return M(backbone)


def images(model: M, n: int = 2, seed: int = 0) -> torch.Tensor:
    size = model.backbone.img_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def randomize_lora_b(module: nn.Module, seed: int = 1) -> None:
    """LoRA B starts at zero, which would make many checks trivially pass: give it random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=gen))


def expected_lora_names(backbone: nn.Module, kinds: tuple[str, ...], blocks: list[int]) -> set[str]:
    return {
        f"{backbone.block_names[i]}.{suffix}.lora_{ab}.default.weight"
        for i in blocks
        for kind in kinds
        for suffix in LORA_SUFFIXES[(backbone.family, kind)]
        for ab in "AB"
    }


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---------------------------------------------------------------------------------------------- targets
def test_target_table_errors_list_valid_names():
    backbone = create("dinov2_tiny")
    assert valid_target_kinds("timm_vit") == valid_target_kinds("open_clip") == ["attn", "mlp"]
    with pytest.raises(ValueError, match="valid families: open_clip, timm_vit"):
        valid_target_kinds("sam")
    with pytest.raises(ValueError, match="valid kinds: attn, mlp"):
        add_lora(backbone, targets=("attn", "qkv"))
    with pytest.raises(ValueError, match="empty"):
        add_lora(backbone, targets=())
    backbone.family = "sam"
    with pytest.raises(ValueError, match="valid families"):
        add_lora(backbone)
    assert not has_lora(backbone)


def test_target_regex_for_last_blocks():
    spec = build_targets(create("dinov2_tiny"), ("attn", "mlp"), last_k=2)
    assert spec.blocks == (1, 2)
    assert (
        spec.target_modules
        == r"(?:model\.blocks\.1|model\.blocks\.2)\.(?:attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
    )
    assert spec.target_parameters == ()
    clip = build_targets(create("clip_tiny"), ("attn",), last_k=1)
    assert clip.target_modules == ""
    assert clip.target_parameters == ("model.transformer.resblocks.2.attn.in_proj_weight",)


# ---------------------------------------------------------------------------------------------- add_lora
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("kinds", [("attn",), ("mlp",), ("attn", "mlp")])
def test_add_lora_adapts_exactly_the_targets(name, kinds):
    backbone = create(name)
    x = torch.randn(2, 3, backbone.img_size, backbone.img_size)
    before = backbone(x)["cls"]
    base_names_before = {n for n, _ in backbone.named_parameters()}
    assert add_lora(backbone, rank=4, alpha=8, targets=kinds) is backbone

    lora = lora_parameter_names(backbone)
    assert lora == expected_lora_names(backbone, kinds, list(range(backbone.num_blocks)))
    assert {n for n, _ in backbone.named_parameters() if ".lora_" in n} == lora
    assert len(base_names_before) == len({n for n, _ in backbone.named_parameters()} - lora)
    assert backbone.lora_config == {
        "rank": 4,
        "alpha": 8.0,
        "dropout": 0.0,
        "last_k": None,
        "targets": list(kinds),
        "blocks": [0, 1, 2],
    }
    assert torch.equal(backbone(x)["cls"], before)  # B = 0: adapters start as the identity


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("last_k", [1, 2, 3])
def test_last_k_adapts_only_the_last_blocks(name, last_k):
    backbone = create(name)
    add_lora(backbone, rank=2, last_k=last_k, targets=("attn", "mlp"))
    blocks = list(range(backbone.num_blocks - last_k, backbone.num_blocks))
    assert lora_parameter_names(backbone) == expected_lora_names(backbone, ("attn", "mlp"), blocks)
    assert backbone.lora_config["blocks"] == blocks


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"last_k": 0}, "last_k=0 is out of range"),
        ({"last_k": 4}, r"use an int in 1\.\.3"),
        ({"last_k": True}, "last_k=True"),
        ({"last_k": 1.5}, "last_k=1.5"),
        ({"rank": 0}, "rank=0"),
        ({"alpha": -1}, "alpha=-1"),
        ({"dropout": 1.0}, "dropout=1.0"),
    ],
)
def test_add_lora_rejects_bad_settings(kwargs, message):
    backbone = create("dinov2_tiny")
    with pytest.raises(ValueError, match=message):
        add_lora(backbone, **kwargs)
    assert not has_lora(backbone)


def test_add_lora_twice_and_dropout_rules():
    timm_backbone = add_lora(create("dinov2_tiny"), dropout=0.1)
    with pytest.raises(RuntimeError, match="already has LoRA"):
        add_lora(timm_backbone)
    with pytest.raises(ValueError, match="dropout=0.0 or use targets"):
        add_lora(create("clip_tiny"), dropout=0.1)
    assert has_lora(add_lora(create("clip_tiny"), dropout=0.1, targets=("mlp",)))


@pytest.mark.parametrize("name", FAMILIES)
def test_add_lora_leaves_base_requires_grad_alone(name):
    backbone = create(name)
    backbone.freeze(1)
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    add_lora(backbone)
    lora = lora_parameter_names(backbone)
    assert {n for n, p in backbone.named_parameters() if p.requires_grad} >= lora
    assert len({n for n, p in backbone.named_parameters() if not p.requires_grad}) == len(frozen)


# ---------------------------------------------------------------------------------------------- stages
def expected_trainable(model: M, stage: Stage) -> set[str]:
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
    if stage.blocks == "all":
        return heads | lora | base
    blocks = range(num - stage.blocks, num) if isinstance(stage.blocks, int) else stage.blocks
    prefixes = tuple(f"backbone.{model.backbone.block_names[i]}." for i in blocks)
    return heads | lora | {n for n in base if n.startswith(prefixes)}


STAGES = [
    Stage("probe", {"head": 1e-2}),
    Stage("lora", {"head": 1e-2, "lora": 1e-3}, weight_decay=0.05),
    Stage("unfreeze", LRS, blocks="all"),
    Stage("unfreeze", LRS, blocks=1),
    Stage("unfreeze", LRS, blocks=[0, 2]),
]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("stage", STAGES, ids=lambda s: f"{s.kind}-{s.blocks}")
def test_stage_trains_exactly_its_parameters(name, stage):
    model = make(name, targets=("attn", "mlp"))
    groups = apply_stage(model, stage)
    assert trainable(model) == expected_trainable(model, stage)

    by_name = {id(p): n for n, p in model.named_parameters()}
    assert [g["name"] for g in groups] == [g for g in ("head", "lora", "backbone") if g in stage.lr]
    for group in groups:
        assert group["lr"] == stage.lr[group["name"]]
        assert group["weight_decay"] == stage.weight_decay
        assert group["params"], group["name"]
        names = {by_name[id(p)] for p in group["params"]}
        if group["name"] == "head":
            assert names == {"heads.weight", "heads.bias"}
        elif group["name"] == "lora":
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
    expected = expected_trainable(model, stage)
    assert changed <= expected
    attn_base = {
        "dinov2_tiny": "backbone.model.blocks.2.attn.qkv.base_layer.weight",
        "clip_tiny": "backbone.model.transformer.resblocks.2.attn.base_layer.in_proj_weight",
    }[name]
    assert attn_base in changed
    assert len(changed) >= len(expected) - 2  # allow an exactly-zero gradient or two (e.g. unused biases)


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
    assert lines["lora"][1:3] == ["4/4", f"{n_lora:,}"]
    assert lines["backbone"][1] == "0/" + str(len(list(model.parameters())) - 6)
    assert lines["total"][2] == f"{n_lora + 147:,}"
    assert f"of {total:,} parameters" in report
    assert lines["lora"][3] == f"{100 * n_lora / total:.2f}%"


# ---------------------------------------------------------------------------------------------- merge
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


# ---------------------------------------------------------------------------------------------- io
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
    other_seed = M(create("dinov2_tiny", seed=1))
    path = save_adapted(tmp_path / "h.safetensors", other_seed, {"heads.weight", "heads.bias"})
    with pytest.raises(ValueError, match="trained on base weights"):
        load_adapted(path, model)
    load_adapted(path, model, strict=False)
