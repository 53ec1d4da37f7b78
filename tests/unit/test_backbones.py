"""Unit tests of prism.backbones on the tiny variants (CPU, no network, no Ray)."""

from __future__ import annotations

import functools
import re

import open_clip
import pytest
import timm
import torch
from torch import nn

from prism.backbones import (
    Backbone,
    create_backbone,
    list_backbones,
    load_weights,
    state_dict_sha256,
)

TINY = ["dinov2_tiny", "dinov2_tiny_reg", "dino_tiny", "dinov3_tiny", "clip_tiny"]
TIMM_TINY = ["dinov2_tiny", "dinov2_tiny_reg", "dino_tiny", "dinov3_tiny"]
EMBEDDING_DIM = {"clip_tiny": 512}  # ViT-B-16's joint width; the timm families have no "embedding"
# name -> (family, patch, embed_dim, default img_size, num_blocks, block module prefix, embedding params)
EXPECTED = {
    "dinov2_tiny": ("timm_vit", 14, 48, 56, 3, "model.blocks", {"cls_token", "pos_embed", "patch_embed"}),
    "dinov2_tiny_reg": (
        "timm_vit",
        14,
        48,
        56,
        3,
        "model.blocks",
        {"cls_token", "reg_token", "pos_embed", "patch_embed"},
    ),
    "dino_tiny": ("timm_vit", 16, 48, 64, 3, "model.blocks", {"cls_token", "pos_embed", "patch_embed"}),
    "dinov3_tiny": ("timm_eva", 16, 48, 64, 3, "model.blocks", {"cls_token", "reg_token", "patch_embed"}),
    "clip_tiny": (
        "open_clip",
        16,
        48,
        64,
        3,
        "model.transformer.resblocks",
        {"class_embedding", "positional_embedding", "conv1", "ln_pre"},
    ),
}


@functools.cache
def _tiny(name: str) -> Backbone:
    """A shared tiny backbone (eval mode) for tests that change nothing in it (weights, requires_grad)."""
    return create_backbone(name).eval()


def _images(backbone: Backbone, batch: int = 2, size: tuple[int, int] | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(123)
    height, width = size or (backbone.img_size, backbone.img_size)
    return torch.randn(batch, 3, height, width, generator=gen)


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert state_dict_sha256(a) == state_dict_sha256(b)


# ---------------------------------------------------------------- registry


def test_registered_names_cover_the_contract():
    expected = {f"dinov2_vit{s}14{r}" for s in "sblg" for r in ("", "_reg")}
    expected |= {"dino_vits16", "dino_vitb16", "clip_vitb16", "clip_vitb32", "clip_vitl14", *TINY}
    assert expected <= set(list_backbones())
    assert list_backbones() == sorted(list_backbones())


def test_unknown_name_lists_registered_names_and_close_matches():
    with pytest.raises(ValueError) as err:
        create_backbone("dinov2_tinny")
    message = str(err.value)
    assert "Did you mean 'dinov2_tiny'" in message
    assert all(name in message for name in list_backbones())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pretrained": True, "weights": "x.pt"}, "not both"),
        ({"pretrained": True}, "without published weights; use pretrained=False"),
        ({"seed": "0"}, "seed must be an int, got '0'"),
    ],
    ids=["pretrained-and-weights", "pretrained-test-arch", "str-seed"],
)
def test_bad_create_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_backbone("dinov2_tiny", **kwargs)


@pytest.mark.parametrize("name", ["dinov2_tiny", "clip_tiny"])
def test_unknown_override_is_a_value_error(name):
    with pytest.raises(ValueError, match="override"):
        create_backbone(name, not_an_arg=3)


def test_real_dinov2_vits14_architecture_without_weights():
    backbone = create_backbone("dinov2_vits14")
    assert (backbone.family, backbone.patch_size, backbone.embed_dim) == ("timm_vit", 14, 384)
    assert (backbone.img_size, backbone.num_blocks) == (224, 12)
    assert backbone.mean == pytest.approx((0.485, 0.456, 0.406))
    assert 21e6 < sum(p.numel() for p in backbone.parameters()) < 23e6


@pytest.mark.parametrize(
    ("family", "module", "exc_type"),
    [("timm_vit", timm, OSError), ("open_clip", open_clip, RuntimeError)],
)
def test_pretrained_download_failure_is_a_clear_error(monkeypatch, family, module, exc_type):
    def offline(*args, **kwargs):
        raise exc_type("no network")

    monkeypatch.setattr(module, "create_model", offline)
    name = "dinov2_vits14" if family == "timm_vit" else "clip_vitb16"
    with pytest.raises(RuntimeError, match="weights=PATH"):
        create_backbone(name, pretrained=True)


# ---------------------------------------------------------------- forward contract


@pytest.mark.parametrize("name", TINY)
def test_attributes(name):
    family, patch, dim, img, blocks, prefix, _ = EXPECTED[name]
    backbone = _tiny(name)
    assert backbone.name == name and backbone.family == family
    assert (backbone.patch_size, backbone.embed_dim, backbone.img_size, backbone.num_blocks) == (
        patch,
        dim,
        img,
        blocks,
    )
    assert backbone.embedding_dim == EMBEDDING_DIM.get(name)
    assert backbone.block_names == [f"{prefix}.{i}" for i in range(blocks)]
    modules = dict(backbone.named_modules())
    assert all(block in modules for block in backbone.block_names)
    assert len(backbone.mean) == len(backbone.std) == 3
    assert re.fullmatch(r"[0-9a-f]{64}", backbone.weights_sha256)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("grid", [None, 6])
def test_forward_shapes(name, grid):
    img_size = None if grid is None else grid * EXPECTED[name][1]
    backbone = _tiny(name) if grid is None else create_backbone(name, img_size=img_size).eval()
    side = backbone.img_size // backbone.patch_size
    with torch.no_grad():
        out = backbone(_images(backbone))
    assert set(out) == {"cls", "patches"} | ({"embedding"} if name in EMBEDDING_DIM else set())
    assert out["cls"].shape == (2, backbone.embed_dim)
    assert out["patches"].shape == (2, side, side, backbone.embed_dim)
    if name in EMBEDDING_DIM:
        assert out["embedding"].shape == (2, EMBEDDING_DIM[name])


@pytest.mark.parametrize("name", TIMM_TINY)
def test_timm_backbones_accept_non_square_inputs(name):
    backbone = _tiny(name)
    p = backbone.patch_size
    with torch.no_grad():
        out = backbone(_images(backbone, size=(4 * p, 6 * p)))
    assert out["patches"].shape == (2, 4, 6, backbone.embed_dim)


@pytest.mark.parametrize(
    ("name", "size"), [("dinov2_tiny", (56, 57)), ("clip_tiny", (64, 80)), ("clip_tiny", (80, 80))]
)
def test_bad_input_size_is_a_value_error(name, size):
    backbone = _tiny(name)
    with pytest.raises(ValueError, match="input size"):
        backbone(_images(backbone, size=size))


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("img_size", [57, 0, -14, "56", True])
def test_bad_img_size_is_a_value_error(name, img_size):
    with pytest.raises(ValueError, match="img_size"):
        create_backbone(name, img_size=img_size)


def test_register_tokens_are_not_patches():
    backbone = _tiny("dinov2_tiny_reg")
    assert backbone.model.num_prefix_tokens == 5
    x = _images(backbone)
    with torch.no_grad():
        out = backbone(x)
        tokens = backbone.model.forward_features(x)  # (B, 1 + 4 + 16, C)
    assert tokens.shape[1] == 1 + 4 + 16
    torch.testing.assert_close(out["cls"], tokens[:, 0])
    torch.testing.assert_close(out["patches"].reshape(2, 16, -1), tokens[:, 5:])


def test_clip_outputs_are_ln_post_of_the_final_tokens_and_their_projection():
    backbone = _tiny("clip_tiny")
    visual = backbone.model
    assert visual.proj.shape == (48, 512)  # the tower keeps its image projection (C, D)
    x = _images(backbone)
    with torch.no_grad():
        out = backbone(x)
        tokens = visual.ln_post(visual.transformer(visual._embeds(x)))  # (B, 1 + 16, C)
    torch.testing.assert_close(out["cls"], tokens[:, 0])
    torch.testing.assert_close(out["patches"].reshape(2, 16, -1), tokens[:, 1:])
    torch.testing.assert_close(out["embedding"], tokens[:, 0] @ visual.proj)
    torch.testing.assert_close(out["embedding"], visual(x))  # the tower's own forward = encode_image


@pytest.mark.parametrize("name", TINY)
def test_batched_forward_equals_per_sample_forward(name):
    backbone = _tiny(name)
    x = _images(backbone, batch=3)
    with torch.no_grad():
        batched = backbone(x)
        single = [backbone(x[i : i + 1]) for i in range(3)]
    for key in batched:
        torch.testing.assert_close(batched[key], torch.cat([s[key] for s in single]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_seed_makes_random_init_reproducible(name):
    a = _tiny(name)  # seed 0
    rng_before = torch.get_rng_state()
    b, c = create_backbone(name), create_backbone(name, seed=1)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert a.weights_sha256 == b.weights_sha256 == state_dict_sha256(b) == state_dict_sha256(b.state_dict())
    assert a.weights_sha256 != c.weights_sha256
    _assert_same_weights(a, b)


# ---------------------------------------------------------------- freeze


def _trainable(backbone: Backbone) -> set[str]:
    return {n for n, p in backbone.named_parameters() if p.requires_grad}


def _expected_trainable(
    name: str, backbone: Backbone, frozen_blocks: set[int], embeddings_frozen: bool
) -> set[str]:
    prefix, embeddings = EXPECTED[name][5], EXPECTED[name][6]
    keep = set()
    for param_name, _ in backbone.named_parameters():
        match = re.match(rf"{re.escape(prefix)}\.(\d+)\.", param_name)
        if match:
            if int(match.group(1)) not in frozen_blocks:
                keep.add(param_name)
        elif param_name.split(".")[1] in embeddings:
            if not embeddings_frozen:
                keep.add(param_name)
        else:
            keep.add(param_name)  # final norm
    return keep


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize(
    ("spec", "frozen_blocks", "embeddings_frozen"),
    [
        ("none", set(), False),
        (0, set(), True),
        (2, {0, 1}, True),
        (3, {0, 1, 2}, True),
        ([1], {1}, False),
        ([0, 2], {0, 2}, False),
        ([], set(), False),
    ],
)
def test_freeze_specs(name, spec, frozen_blocks, embeddings_frozen):
    backbone = create_backbone(name).freeze("all")  # not the shared _tiny: freeze changes requires_grad
    assert _trainable(backbone) == set()
    assert backbone.freeze(spec) is backbone
    assert _trainable(backbone) == _expected_trainable(name, backbone, frozen_blocks, embeddings_frozen)


@pytest.mark.parametrize("spec", [-1, 4, [3], [-1], ["0"], "some", True, 1.5])
def test_bad_freeze_spec_is_a_value_error(spec):
    backbone = create_backbone("dinov2_tiny")
    before = _trainable(backbone)
    with pytest.raises(ValueError, match=re.escape(repr(spec))):  # the message quotes the bad spec
        backbone.freeze(spec)
    assert _trainable(backbone) == before  # rejected before any flag changed


def test_freeze_leaves_lora_parameters_alone_and_weights_load_refuses_them():
    backbone = create_backbone("clip_tiny")
    backbone.model.transformer.resblocks[0].mlp.c_fc.lora_A = nn.Linear(48, 2, bias=False)
    backbone.freeze("all")
    assert _trainable(backbone) == {"model.transformer.resblocks.0.mlp.c_fc.lora_A.weight"}
    with pytest.raises(RuntimeError, match="before adding LoRA"):
        load_weights(backbone, create_backbone("clip_tiny").state_dict())
