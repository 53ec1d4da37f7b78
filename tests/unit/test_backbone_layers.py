"""`Backbone.forward(x, layers=...)`: intermediate block outputs, on the tiny variants (CPU, no network).

References are computed independently of prism: forward hooks on the library's own blocks, and the
libraries' own `forward_intermediates` (timm `VisionTransformer`, open_clip `VisionTransformer`).
"""

from __future__ import annotations

import functools
import re

import pytest
import torch
from torch import nn

from prism.adapters import add_lora
from prism.backbones import Backbone, create_backbone

TINY = ["dinov2_tiny", "dinov2_tiny_reg", "dino_tiny", "dinov2_tiny_conv", "dinov3_tiny", "dinov3_tiny_plus", "clip_tiny"]
TIMM_TINY = [n for n in TINY if n != "clip_tiny"]
# (layers asked, the block indices they name in a 3-block backbone)
LAYER_CASES = [
    ((-1,), (2,)),
    ((0,), (0,)),
    ((2, 0), (2, 0)),
    ((0, 1, 2), (0, 1, 2)),
    ((-3, -1, 1), (0, 2, 1)),
    ([1], (1,)),
]


@functools.cache
def _tiny(name: str) -> Backbone:
    """A shared tiny backbone (eval mode) for tests that change nothing in it."""
    return create_backbone(name).eval()


def _images(backbone: Backbone, batch: int = 2, size: tuple[int, int] | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    height, width = size or (backbone.img_size, backbone.img_size)
    return torch.randn(batch, 3, height, width, generator=gen)


def _blocks(backbone: Backbone) -> list[nn.Module]:
    return [backbone.get_submodule(name) for name in backbone.block_names]


def _prefix_tokens(backbone: Backbone) -> int:
    return backbone.model.num_prefix_tokens if backbone.family != "open_clip" else 1


def _final_norm(backbone: Backbone) -> nn.Module:
    return backbone.model.ln_post if backbone.family == "open_clip" else backbone.model.norm


def _hooked_forward(backbone: Backbone, x: torch.Tensor, **kwargs) -> tuple[dict, list[torch.Tensor]]:
    """backbone(x, **kwargs) and every block's output (B, prefix + N, C), recorded by forward hooks."""
    seen: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda _m, _i, out: seen.append(out)) for b in _blocks(backbone)]
    try:
        out = backbone(x, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return out, seen


def _library_intermediates(
    backbone: Backbone, x: torch.Tensor, indices: tuple[int, ...]
) -> list[torch.Tensor]:
    """The library's own forward_intermediates, (B, N, C) per index in ascending order, prefix removed."""
    if backbone.family in ("timm_vit", "timm_eva"):
        return backbone.model.forward_intermediates(
            x, indices=list(indices), norm=False, output_fmt="NLC", intermediates_only=True
        )
    return backbone.model.forward_intermediates(
        x, indices=list(indices), output_fmt="NLC", intermediates_only=True
    )["image_intermediates"]


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize(("layers", "blocks"), LAYER_CASES, ids=[str(c[0]) for c in LAYER_CASES])
def test_layers_are_the_block_outputs_without_prefix_tokens(name, layers, blocks):
    backbone = _tiny(name)
    x = _images(backbone)
    side, prefix = backbone.img_size // backbone.patch_size, _prefix_tokens(backbone)
    with torch.no_grad():
        out, seen = _hooked_forward(backbone, x, layers=layers)
        ascending = tuple(sorted(blocks))
        library = dict(zip(ascending, _library_intermediates(backbone, x, ascending), strict=True))
    assert len(seen) == backbone.num_blocks  # one pass over the blocks
    assert isinstance(out["layers"], tuple) and len(out["layers"]) == len(layers)
    for got, index in zip(out["layers"], blocks, strict=True):
        assert got.shape == (2, side, side, backbone.embed_dim)
        torch.testing.assert_close(got.reshape(2, side * side, -1), seen[index][:, prefix:], rtol=0, atol=0)
        torch.testing.assert_close(got.reshape(2, side * side, -1), library[index], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", TINY)
def test_asking_for_layers_leaves_the_other_outputs_unchanged(name):
    backbone = _tiny(name)
    x = _images(backbone)
    with torch.no_grad():
        plain, with_layers = backbone(x), backbone(x, layers=(0, -1))
    assert "layers" not in plain and "layers" not in backbone(x, layers=[])
    assert set(with_layers) == set(plain) | {"layers"}
    for key in plain:
        torch.testing.assert_close(with_layers[key], plain[key], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", TINY)
def test_final_norm_of_the_last_layer_is_patches(name):
    backbone = _tiny(name)
    with torch.no_grad():
        out = backbone(_images(backbone), layers=(-1,))
        normed = _final_norm(backbone)(out["layers"][0])
    torch.testing.assert_close(normed, out["patches"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TIMM_TINY)
def test_layers_follow_dynamic_img_sizes(name):
    backbone = _tiny(name)
    p = backbone.patch_size
    x = _images(backbone, size=(4 * p, 6 * p))
    with torch.no_grad():
        out, seen = _hooked_forward(backbone, x, layers=(1, -1))
    prefix = _prefix_tokens(backbone)
    assert [t.shape for t in out["layers"]] == [(2, 4, 6, backbone.embed_dim)] * 2
    torch.testing.assert_close(out["layers"][0].reshape(2, 24, -1), seen[1][:, prefix:], rtol=0, atol=0)
    torch.testing.assert_close(_final_norm(backbone)(out["layers"][1]), out["patches"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_batched_layers_equal_per_sample_layers(name):
    backbone = _tiny(name)
    x = _images(backbone, batch=3)
    with torch.no_grad():
        batched = backbone(x, layers=(0, 2))["layers"]
        single = [backbone(x[i : i + 1], layers=(0, 2))["layers"] for i in range(3)]
    for k in range(2):
        torch.testing.assert_close(batched[k], torch.cat([s[k] for s in single]), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- LoRA and gradients


def _lora_backbone(name: str) -> Backbone:
    """A tiny backbone with rank-4 LoRA in its last 2 blocks, lora_B randomised so that LoRA matters."""
    backbone = add_lora(create_backbone(name), rank=4, last_k=2)
    with torch.no_grad():
        for param_name, param in backbone.named_parameters():
            if ".lora_B." in param_name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(param_name)))
    return backbone.eval()


@pytest.mark.parametrize("name", ["dinov2_tiny_reg", "clip_tiny"])
def test_layers_with_lora_match_hooks_and_the_library(name):
    backbone = _lora_backbone(name)
    x = _images(backbone)
    prefix = _prefix_tokens(backbone)
    with torch.no_grad():
        out, seen = _hooked_forward(backbone, x, layers=(2, 0, 1))
        library = _library_intermediates(backbone, x, (0, 1, 2))
        plain = create_backbone(name).eval()(x, layers=(2, 0, 1))["layers"]
    for got, index in zip(out["layers"], (2, 0, 1), strict=True):
        flat = got.reshape(2, -1, backbone.embed_dim)
        torch.testing.assert_close(flat, seen[index][:, prefix:], rtol=0, atol=0)
        torch.testing.assert_close(flat, library[index], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["layers"][1], plain[1])  # block 0 has no LoRA
    assert not torch.allclose(out["layers"][0], plain[0], atol=1e-3)  # block 2 has


@pytest.mark.parametrize("name", ["dinov2_tiny", "clip_tiny"])
def test_gradients_flow_through_a_layer_to_the_blocks_below_it_only(name):
    backbone = _lora_backbone(name).train()
    out = backbone(_images(backbone), layers=(1,))
    out["layers"][0].square().mean().backward()
    grads = {n: p.grad for n, p in backbone.named_parameters()}
    block_of = {n: re.match(rf"{re.escape(backbone.block_prefix)}\.(\d+)\.", n) for n in grads}
    lora = {n: int(m.group(1)) for n, m in block_of.items() if m and ".lora_" in n}
    assert sorted(set(lora.values())) == [1, 2]
    for param_name, block in lora.items():
        grad = grads[param_name]
        if block == 1:
            assert grad is not None and grad.abs().sum() > 0, param_name
        else:
            assert grad is None or not grad.any(), param_name  # block 2 is above the requested layer
    base_block0 = [n for n, m in block_of.items() if m and m.group(1) == "0" and ".lora_" not in n]
    assert base_block0 and all(grads[n] is not None and grads[n].abs().sum() > 0 for n in base_block0)


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ((3,), r"\[3\] out of range"),
        ((-4,), r"\[-4\] out of range"),
        ((0, 5, -9), r"\[5, -9\] out of range"),
        ((1, 1), r"block\(s\) \[1\] more than once"),
        ((0, -3), r"block\(s\) \[0\] more than once"),
        ((True,), r"\[True\] out of range"),
        ((1.0,), r"\[1.0\] out of range"),
        ("0", "must be a sequence of block indices, got '0'"),
        (1, "must be a sequence of block indices, got 1"),
    ],
)
@pytest.mark.parametrize("name", ["dinov2_tiny", "clip_tiny"])
def test_bad_layers_are_a_value_error_naming_the_valid_range(name, layers, message):
    backbone = _tiny(name)
    with pytest.raises(ValueError, match=message) as err:
        backbone(_images(backbone), layers=layers)
    assert "valid block indices are -3..2" in str(err.value)
