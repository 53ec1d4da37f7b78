"""SAM's image encoder as a backbone: segment-anything's own encoder, official checkpoints loaded strictly by
their image_encoder.* keys (resampled to another size), LoRA on its attention and MLP, clear errors."""

from __future__ import annotations

import pytest
import torch

from prism.adapters import add_lora
from prism.backbones import create_backbone, list_backbones


def test_the_sam_encoders_are_registered():
    assert {"sam_vit_b", "sam_vit_l", "sam_vit_h", "sam_tiny"} <= set(list_backbones())


def test_outputs_are_sams_image_embedding():
    torch.manual_seed(0)
    b = create_backbone("sam_tiny", img_size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = b(x, layers=[0, -1])
        embedding = b.model(x)  # segment-anything's ImageEncoderViT.forward: (B, 256 | 32, g, g)
    assert out["patches"].shape == (2, 4, 4, 32) and out["cls"].shape == (2, 32)
    torch.testing.assert_close(out["patches"], embedding.permute(0, 2, 3, 1))
    torch.testing.assert_close(out["cls"], embedding.mean((2, 3)))
    assert [tuple(t.shape) for t in out["layers"]] == [(2, 4, 4, 48), (2, 4, 4, 48)]


def test_an_official_checkpoint_loads_strictly_and_resamples_to_another_size(tmp_path):
    torch.manual_seed(1)
    src = create_backbone("sam_tiny", img_size=64, seed=1)
    state = {f"image_encoder.{k}": v for k, v in src.model.state_dict().items()}
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 32)  # the rest of a SAM file: ignored
    path = tmp_path / "sam_tiny.pth"
    torch.save(state, path)
    same = create_backbone("sam_tiny", img_size=64, weights=path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(same(x)["patches"], src(x)["patches"])
    assert same.weights_sha256 == src.weights_sha256 != create_backbone("sam_tiny", img_size=64).weights_sha256
    bigger = create_backbone("sam_tiny", img_size=96, weights=path)  # 6 x 6 grid from a 4 x 4 table
    assert bigger.model.pos_embed.shape == (1, 6, 6, 48)
    assert bigger(torch.randn(1, 3, 96, 96))["patches"].shape == (1, 6, 6, 32)
    del state["image_encoder.neck.0.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="neck.0.weight"):
        create_backbone("sam_tiny", img_size=64, weights=path)


def test_lora_adapts_attention_and_mlp():
    torch.manual_seed(0)
    b = create_backbone("sam_tiny", img_size=64)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = b(x)["patches"].clone()
    add_lora(b, rank=2, alpha=4, targets=("attn", "mlp"))
    names = [n for n, _ in b.named_parameters() if "lora_B" in n]
    assert any("attn.qkv" in n for n in names) and any("mlp.lin2" in n for n in names)
    with torch.no_grad():
        torch.testing.assert_close(b(x)["patches"], before)  # B starts at zero
        for n, p in b.named_parameters():
            if "lora_B" in n:
                p.normal_()
        assert not torch.allclose(b(x)["patches"], before)


def test_no_hub_weights_and_fixed_input_size():
    with pytest.raises(ValueError, match="pass weights=PATH"):
        create_backbone("sam_vit_b", pretrained=True)
    b = create_backbone("sam_tiny", img_size=64)
    with pytest.raises(ValueError, match="img_size=64"):
        b(torch.randn(1, 3, 32, 32))
