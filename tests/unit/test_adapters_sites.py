"""LoRA head sites: injection, parameter groups, what each stage trains, save/load and merge of every site.

The model is a tiny dinov2 backbone + SAM-like heads: a decoder whose attention block has q/k/v/out
projections (the "decoder" site) and an MLP, a norm, and a `proj` Linear (the "out" site in most tests).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from prism.adapters import (
    add_head_lora,
    add_lora,
    apply_stage,
    has_lora,
    load_adapted,
    lora_sites,
    merge_lora,
    parameter_groups,
    save_adapted,
    stage_lr_keys,
    trainable_names_union,
    trainable_report,
)
from tests.helpers.models import create, randomize_lora_b, snapshot, trainable

ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")


class Attention(nn.Module):
    """Self-attention through q/k/v/out projections (as in SAM's mask decoder): (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, num_heads: int = 2) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class Decoder(nn.Module):
    """2 learned tokens attend with the patches: (B, N, C) -> (B, 2, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(2, dim))
        self.attn = Attention(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.tokens.expand(len(patches), -1, -1), patches], dim=1)
        x = x + self.attn(x)
        return (x + self.mlp(x))[:, :2]


class TinyHeads(nn.Module):
    """Backbone features -> (B, 2, 3)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.decoder = Decoder(dim)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, 3)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.proj(self.norm(self.decoder(features["patches"].flatten(1, 2))))


class TinySegmenter(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.heads = TinyHeads(backbone.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.backbone(x))


@dataclass
class Stage:
    """The stage fields `apply_stage` reads, lora_sites included."""

    kind: str
    lr: dict
    blocks: object = "all"
    lora_sites: list | None = None
    weight_decay: float = 0.0
    name: str | None = None


def build(backbone_lora: bool = True, sites: tuple[str, ...] = ("decoder", "out")) -> TinySegmenter:
    """TinySegmenter with backbone LoRA (rank 4, last 2 blocks) and the head sites named in `sites`."""
    model = TinySegmenter(create("dinov2_tiny"))
    if backbone_lora:
        add_lora(model.backbone, rank=4, alpha=8, last_k=2)
    if "decoder" in sites:
        add_head_lora(model, "decoder", "decoder", ATTN, rank=2, alpha=4)
    if "out" in sites:
        add_head_lora(model, "out", "proj", ["proj"], rank=2, alpha=4)
    return model


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 56, 56, generator=torch.Generator().manual_seed(seed))


# Each group's members, from parameter names alone (independent of prism.adapters.stages).
def members(model: nn.Module, group: str, blocks: object = "all") -> set[str]:
    names = {n for n, _ in model.named_parameters()}
    lora = {n for n in names if ".lora_" in n}
    under = {"decoder": "heads.decoder.", "out": "heads.proj.", "backbone": "backbone."}
    if group == "head":
        return {
            n for n in names if n.startswith("heads.") and not n.startswith(("heads.decoder.", "heads.proj."))
        }
    family, _, site = group.partition(".")
    if family == "lora":
        return {n for n in lora if n.startswith(under[site])}
    if family == "head":
        return {n for n in names - lora if n.startswith(under[site])}
    base = {n for n in names - lora if n.startswith("backbone.")}
    if blocks == "all":
        return base
    return {
        n for n in base if n.startswith(tuple(f"backbone.model.blocks.{i}." for i in range(3 - blocks, 3)))
    }


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
