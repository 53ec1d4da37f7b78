"""LoRA head sites: injection, parameter groups, and what each stage trains, on the tiny segmenter
(`tests.helpers.segmenter`: a "decoder" site on q/k/v/out projections, an "out" site on `proj`)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prism.adapters import (
    add_head_lora,
    apply_stage,
    lora_sites,
    parameter_groups,
    stage_lr_keys,
    trainable_report,
)
from tests.helpers.models import Stage, randomize_lora_b, snapshot, trainable
from tests.helpers.segmenter import ATTN, build, images, members


# --------------------------------------------------------------------------------------------- inject
def test_add_head_lora_adapts_the_named_linears_and_records_the_site():
    model = build(sites=())
    x = images()
    with torch.no_grad():
        before = model(x)
    adapted = add_head_lora(model, "decoder", "decoder", ["attn.q_proj", "v_proj"], rank=2, alpha=4)
    assert adapted == ["heads.decoder.attn.q_proj", "heads.decoder.attn.v_proj"]
    assert model.heads.lora_sites == {
        "decoder": {
            "module": "decoder",
            "targets": ["attn.q_proj", "v_proj"],
            "rank": 2,
            "alpha": 4.0,
            "dropout": 0.0,
            "modules": adapted,
        },
    }
    lora = {n for n, _ in model.heads.named_parameters() if ".lora_" in n}
    assert lora == {f"decoder.attn.{m}.lora_{ab}.default.weight" for m in ("q_proj", "v_proj") for ab in "AB"}
    assert all(p.requires_grad for n, p in model.heads.named_parameters() if n in lora)
    assert not hasattr(model.heads, "peft_config")
    with torch.no_grad():
        assert torch.equal(model(x), before)  # B starts at zero
    add_head_lora(model, "out", "proj", ["proj"])
    assert lora_sites(model) == {"backbone": "backbone.", "decoder": "heads.decoder.", "out": "heads.proj."}
    assert lora_sites(build(backbone_lora=False, sites=("decoder",))) == {"decoder": "heads.decoder."}
    assert lora_sites(build(backbone_lora=False, sites=())) == {}


@pytest.mark.parametrize(
    ("site", "module", "targets", "kwargs", "message"),
    [
        ("dec", "decodr", ATTN, {}, r"no module 'decodr'; modules there: decoder, decoder\.attn"),
        ("dec", "decoder", ["proj"], {}, r"\['proj'\] match no nn.Linear .*decoder\.attn\.k_proj"),
        ("dec", "decoder", ["q_proj", "qkv"], {}, r"\['qkv'\] match no nn.Linear"),
        (
            "dec",
            "norm",
            ["norm"],
            {},
            r"match no nn.Linear under model.heads.norm; Linear modules there: none",
        ),
        ("Decoder", "decoder", ATTN, {}, r"site name 'Decoder' is invalid"),
        ("backbone", "decoder", ATTN, {}, r"other than 'backbone'"),
        ("a.b", "decoder", ATTN, {}, r"\[a-z\]\[a-z0-9_\]\*"),
        ("out", "decoder", ATTN, {}, r"site 'out' is already present \(module 'proj'\)"),
        ("dec", "", ["q_proj"], {}, r"overlaps site 'out' \(module 'proj'\)"),
        ("dec", "proj", ["proj"], {}, "overlaps site 'out'"),
        ("dec", "decoder", ATTN, {"rank": 0}, r"rank=0 is invalid"),
        ("dec", "decoder", [], {}, "non-empty module name suffixes"),
    ],
)
def test_add_head_lora_errors_name_what_exists(site, module, targets, kwargs, message):
    model = build(sites=("out",))
    with pytest.raises(ValueError, match=message):
        add_head_lora(model, site, module, targets, **kwargs)
    assert set(model.heads.lora_sites) == {"out"}


def test_linears_inside_multihead_attention_are_not_targets():
    model = build(sites=())
    model.heads.mha = nn.MultiheadAttention(48, 2, batch_first=True)
    with pytest.raises(ValueError, match="match no nn.Linear under model.heads.mha"):
        add_head_lora(model, "mha", "mha", ["out_proj"])


# --------------------------------------------------------------------------------------------- groups
def test_groups_partition_backbone_and_head_parameters():
    model = build()
    groups = parameter_groups(model)
    assert list(groups) == [
        "head",
        "head.decoder",
        "head.out",
        "lora.backbone",
        "lora.decoder",
        "lora.out",
        "backbone",
    ]
    for group, names in groups.items():
        assert names == members(model, group), group
    everything = [n for names in groups.values() for n in names]
    assert sorted(everything) == sorted(n for n, _ in model.named_parameters())  # each exactly once
    assert stage_lr_keys(model) == [
        "head",
        "head.decoder",
        "head.out",
        "lora",
        "lora.backbone",
        "lora.decoder",
        "lora.out",
        "backbone",
    ]
    assert stage_lr_keys(build(backbone_lora=False, sites=())) == ["head", "backbone"]


def test_unrecorded_head_lora_is_refused():
    model = build(sites=("decoder",))
    model.heads.lora_sites = None  # LoRA layers stay, the record is gone
    with pytest.raises(ValueError, match="no LoRA site records .* add_head_lora"):
        parameter_groups(model)


# --------------------------------------------------------------------------------------------- stages
LR = {"head": 1e-2, "lora": 1e-3, "backbone": 1e-4}
STAGES = [  # stage, the groups it trains in order, {group: lr} where it differs from the family's lr
    (Stage("probe", {"head": 1e-2}), ["head"], {}),
    (Stage("probe", {"head": 1e-2, "head.decoder": 5e-3}), ["head", "head.decoder"], {"head.decoder": 5e-3}),
    (Stage("lora", {"head": 1e-2, "lora": 1e-3}), ["head", "lora.backbone", "lora.decoder", "lora.out"], {}),
    (Stage("lora", {"head": 1e-2, "lora": 1e-3}, lora_sites=["decoder"]), ["head", "lora.decoder"], {}),
    (
        Stage("lora", {"head": 1e-2, "lora.decoder": 2e-3}, lora_sites=["decoder"]),
        ["head", "lora.decoder"],
        {"lora.decoder": 2e-3},
    ),
    (
        Stage("lora", {**LR, "lora.out": 3e-3}, lora_sites=["out", "backbone"]),
        ["head", "lora.backbone", "lora.out"],
        {"lora.out": 3e-3},
    ),
    (
        Stage("lora", {**LR, "head.out": 4e-3}),
        ["head", "head.out", "lora.backbone", "lora.decoder", "lora.out"],
        {"head.out": 4e-3},
    ),
    (Stage("unfreeze", LR, blocks=1), ["head", "lora.backbone", "lora.decoder", "lora.out", "backbone"], {}),
    (Stage("unfreeze", {"head": 1e-2, "backbone": 1e-4}, lora_sites=[]), ["head", "backbone"], {}),
    (
        Stage("unfreeze", {**LR, "head.decoder": 5e-3}, blocks=2, lora_sites=["backbone"]),
        ["head", "head.decoder", "lora.backbone", "backbone"],
        {"head.decoder": 5e-3},
    ),
]


@pytest.mark.parametrize(
    ("stage", "expected", "lrs"), STAGES, ids=[f"{s.kind}:{'+'.join(e)}" for s, e, _ in STAGES]
)
def test_stage_trains_exactly_its_groups(stage, expected, lrs):
    model = build()
    groups = apply_stage(model, stage)
    assert [g["name"] for g in groups] == expected
    blocks = stage.blocks if stage.kind == "unfreeze" else "all"
    assert trainable(model) == set().union(*(members(model, g, blocks) for g in expected))
    by_id = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        assert {by_id[id(p)] for p in group["params"]} == members(model, group["name"], blocks)
        assert group["lr"] == lrs.get(
            group["name"], LR.get(group["name"].partition(".")[0], stage.lr.get("head"))
        )
        assert group["weight_decay"] == 0.0


def test_lora_stage_step_changes_only_the_selected_site():
    torch.manual_seed(0)
    model = build()
    randomize_lora_b(model)
    optimizer = torch.optim.SGD(
        apply_stage(model, Stage("lora", {"head": 1e-2, "lora": 1e-2}, lora_sites=["decoder"]))
    )
    before = snapshot(model)
    model(images()).square().mean().backward()
    optimizer.step()
    after = snapshot(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == members(model, "head") | members(model, "lora.decoder")


def test_lora_stage_with_head_lora_only():
    model = build(backbone_lora=False, sites=("decoder",))
    groups = apply_stage(model, Stage("lora", {"head": 1e-2, "lora": 1e-3}))
    assert [g["name"] for g in groups] == ["head", "lora.decoder"]


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        (
            Stage("lora", {"head": 1e-2, "lora.nope": 1e-3}),
            r"lr key\(s\) \['lora.nope'\] name no parameter group .*accepted lr keys: \['head', 'head.decoder'",
        ),
        (
            Stage("probe", {"head": 1e-2, "head.backbone": 1e-3}),
            r"\['head.backbone'\] name no parameter group",
        ),
        (
            Stage("lora", {"head": 1e-2, "lora": 1e-3}, lora_sites=["decodr"]),
            r"unknown site\(s\) \['decodr'\]; this model's LoRA sites: \['backbone', 'decoder', 'out'\]",
        ),
        (
            Stage("lora", {"head": 1e-2, "lora.backbone": 1e-3}),
            r"no lr for \['lora'\]; add lr.lora: <float> \(every",
        ),
        (Stage("probe", {"lora": 1e-3}), r"no lr for \['head'\]"),
        (Stage("unfreeze", {"head": 1e-2, "lora": 1e-3}), r"no lr for \['backbone'\]"),
        (Stage("lora", LR, lora_sites=[]), r"lora_sites=\[\] selects no LoRA site"),
    ],
)
def test_bad_site_stages_raise(stage, message):
    with pytest.raises(ValueError, match=message):
        apply_stage(build(), stage)


def test_stages_on_a_model_without_lora():
    model = build(backbone_lora=False, sites=())
    with pytest.raises(ValueError, match="no LoRA adapters; configure lora"):
        apply_stage(model, Stage("lora", {"head": 1e-2, "lora": 1e-3}))
    with pytest.raises(
        ValueError, match=r"\['lora'\] name no parameter group .*accepted lr keys: \['head', 'backbone'\]"
    ):
        apply_stage(model, Stage("unfreeze", LR))


def test_trainable_report_has_a_row_per_group():
    model = build()
    apply_stage(model, Stage("lora", {"head": 1e-2, "lora": 1e-3}, lora_sites=["decoder"]))
    rows = {line.split()[0]: line.split() for line in trainable_report(model).splitlines()}
    assert list(rows) == ["group", *parameter_groups(model), "total"]
    n_decoder = sum(p.numel() for n, p in model.named_parameters() if n in members(model, "lora.decoder"))
    assert rows["lora.decoder"][1:3] == ["8/8", f"{n_decoder:,}"]
    assert rows["lora.out"][1] == "0/2" and rows["head.decoder"][1].startswith("0/")
