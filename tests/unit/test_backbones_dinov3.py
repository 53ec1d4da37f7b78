"""DINOv3 backbones (timm Eva): sizes, the LoRA route through attn.qkv, and both checkpoint key formats."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from prism.adapters import add_lora
from prism.backbones import create_backbone

# Parameter counts of the published DINOv3 ViTs (facebookresearch/dinov3 README), in millions.
SIZES = {
    "dinov3_vits16": (384, 12, 21),
    "dinov3_vits16plus": (384, 12, 29),
    "dinov3_vitb16": (768, 12, 86),
    "dinov3_vitl16": (1024, 24, 300),
    "dinov3_vith16plus": (1280, 32, 840),
}
TINY = ["dinov3_tiny", "dinov3_tiny_plus"]


@pytest.mark.parametrize("name", sorted(SIZES))
def test_published_sizes(name):
    with torch.device("meta"):  # shapes only: H+ would take 3.4 GB
        backbone = create_backbone(name)
    width, depth, millions = SIZES[name]
    assert (backbone.family, backbone.patch_size, backbone.embed_dim, backbone.num_blocks) == (
        "timm_eva", 16, width, depth)
    count = sum(p.numel() for p in backbone.parameters()) / 1e6
    assert count == pytest.approx(millions, rel=0.05), count


def _randomised(name: str) -> torch.nn.Module:
    """A tiny DINOv3 with every parameter random (q/v biases are zero at init, which would hide bugs)."""
    backbone = create_backbone(name).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in backbone.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    return backbone


def _images(backbone, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, backbone.img_size, backbone.img_size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", TINY)
def test_lora_on_the_fused_qkv_changes_the_output(name):
    """timm adds DINOv3's qkv bias by F.linear on attn.qkv.weight, which skips attn.qkv's forward and any LoRA
    wrapping it; the builder routes it through the module. Without that route this LoRA would do nothing."""
    backbone = _randomised(name)
    x = _images(backbone)
    before = backbone(x)["cls"]
    add_lora(backbone, rank=4, alpha=8, targets=("attn",), last_k=1)
    with torch.no_grad():
        for pname, param in backbone.named_parameters():
            if "attn.qkv.lora_B" in pname:
                param.normal_(0, 1.0)
    after = backbone(x)["cls"]
    assert (after - before).abs().max() > 1e-3
    for block in backbone.model.blocks:  # the route taken away: LoRA on qkv becomes a no-op (the trap)
        block.attn.qkv_bias_separate = False
    assert torch.allclose(backbone(x)["cls"], before, atol=1e-6)


@pytest.mark.parametrize("name", TINY)
def test_routing_qkv_keeps_the_numbers(name):
    backbone = _randomised(name)
    x = _images(backbone)
    routed = backbone(x)["patches"]
    for block in backbone.model.blocks:
        block.attn.qkv_bias_separate = False
    torch.testing.assert_close(backbone(x)["patches"], routed, atol=1e-5, rtol=1e-5)


def _original_dinov3_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm Eva keys -> the layout of facebookresearch/dinov3 checkpoints (written independently of timm)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("attn.q_bias"):
            v_bias = state[key.replace("q_bias", "v_bias")]
            out[key.replace("q_bias", "qkv.bias")] = torch.cat([value, torch.zeros_like(value), v_bias])
            out[key.replace("q_bias", "qkv.bias_mask")] = torch.cat(
                [torch.ones_like(value), torch.zeros_like(value), torch.ones_like(value)])
            continue
        if key.endswith("attn.v_bias"):
            continue
        key = key.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma")
        key = key.replace("gamma_2", "ls2.gamma")
        key = key.replace("mlp.fc1_g", "mlp.w1").replace("mlp.fc1_x", "mlp.w2")
        if "mlp.w1" in key or "mlp.w2" in key or ("mlp.fc2" in key and any("fc1_g" in k for k in state)):
            key = key.replace("mlp.fc2", "mlp.w3")
        out[key] = value
    width = state["cls_token"].shape[-1]
    out["mask_token"] = torch.zeros(1, width)
    out["rope_embed.periods"] = torch.arange(1.0, 7.0)
    return out


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("layout", ["timm", "original", "teacher"])
def test_checkpoint_formats_load_exactly(tmp_path, name, layout):
    source = _randomised(name)
    state = dict(source.model.state_dict())
    if layout != "timm":
        state = _original_dinov3_keys(state)
        assert "storage_tokens" in state and not any("q_bias" in k for k in state)
    if layout == "teacher":  # a DINOv3 training checkpoint
        path = tmp_path / "ckpt.pth"
        torch.save({"teacher": {f"backbone.{k}": v for k, v in state.items()}}, path)
    else:
        path = tmp_path / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = create_backbone(name, weights=path, seed=7).eval()
    for key, value in source.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    assert loaded.weights_sha256 == create_backbone(name, weights=path).weights_sha256
    x = _images(source)
    torch.testing.assert_close(loaded(x)["patches"], source(x)["patches"])


def test_timm_checkpoint_without_qkv_bias_loads_with_zero_bias(tmp_path):
    source = _randomised("dinov3_tiny")
    state = {k: v for k, v in source.model.state_dict().items() if not k.endswith(("q_bias", "v_bias"))}
    save_file(state, str(tmp_path / "w.safetensors"))
    loaded = create_backbone("dinov3_tiny", weights=tmp_path / "w.safetensors")
    for block in loaded.model.blocks:
        assert not block.attn.q_bias.any() and not block.attn.v_bias.any()


def test_a_key_bias_is_refused(tmp_path):
    state = _original_dinov3_keys(dict(_randomised("dinov3_tiny").model.state_dict()))
    state["blocks.0.attn.qkv.bias"][48:96] = 1.0
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="blocks.0.attn.qkv.bias has a non-zero key bias"):
        create_backbone("dinov3_tiny", weights=tmp_path / "w.safetensors")


def test_weights_of_another_size_name_the_bad_keys(tmp_path):
    state = dict(_randomised("dinov3_tiny").model.state_dict())
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="missing keys: .*mlp.fc1_g"):
        create_backbone("dinov3_tiny_plus", weights=tmp_path / "w.safetensors")


def test_swiglu_blocks_get_lora_on_their_three_mlp_linears_and_merge_exactly():
    from prism.adapters import merge_lora
    from tests.helpers.models import make, randomize_lora_b

    model = make("dinov3_tiny_plus", targets=("attn", "mlp")).eval()
    names = {n for n, _ in model.backbone.named_parameters() if "lora_A" in n}
    assert {n.split(".lora_A")[0].removeprefix("model.blocks.0.") for n in names if ".blocks.0." in n} == {
        "attn.qkv", "attn.proj", "mlp.fc1_g", "mlp.fc1_x", "mlp.fc2"}
    x = _images(model.backbone)
    with torch.no_grad():
        randomize_lora_b(model)
        unmerged = model(x)
        merge_lora(model)
        torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=0)
