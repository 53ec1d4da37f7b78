"""The text-prompted segmenter's model parts, without Ray: SAM's decoder batched over images equals SAM's own
per-image decoder; SAM checkpoints load by their prompt_encoder.* / mask_decoder.* keys, strictly; the text
reaches the decoder (two prompts, two masks; gradients reach the text projection) while the CLIP tower stays
frozen and outside every optimiser group."""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

from prism.backbones.clip_text import create_text_tower
from prism.tasks.segment.model import TextPromptHeads
from prism.tasks.segment.sam_parts import build_mask_decoder, build_prompt_encoder, load_sam_parts
from tests.helpers.models import create


def stock_copy(batched):
    """SAM's own MaskDecoder with the same weights as ``batched``."""
    t = batched.transformer
    stock = MaskDecoder(transformer_dim=batched.transformer_dim, num_multimask_outputs=batched.num_multimask_outputs,
                        iou_head_hidden_dim=batched.iou_prediction_head.layers[0].out_features,
                        transformer=TwoWayTransformer(depth=len(t.layers), embedding_dim=t.embedding_dim,
                                                      mlp_dim=t.mlp_dim, num_heads=t.num_heads))
    stock.load_state_dict(batched.state_dict(), strict=True)
    return stock.eval()


@pytest.mark.parametrize("prompts", [1, 2])
def test_batched_decoder_equals_sams_decoder_image_by_image(prompts):
    torch.manual_seed(0)
    dec = build_mask_decoder("tiny").eval()
    pe_enc = build_prompt_encoder("tiny", grid=8, image_size=32)
    stock = stock_copy(dec)
    b, d = 3, dec.transformer_dim
    images = torch.randn(b, d, 8, 8)
    sparse = torch.randn(b * prompts, 4, d)
    dense = torch.randn(b * prompts, d, 8, 8)
    pe = pe_enc.get_dense_pe()
    with torch.no_grad():
        masks, iou = dec(images, pe, sparse, dense, multimask_output=True)
        assert masks.shape == (b * prompts, 3, 32, 32) and iou.shape == (b * prompts, 3)
        for i in range(b):
            rows = slice(i * prompts, (i + 1) * prompts)
            m, q = stock(images[i:i + 1], pe, sparse[rows], dense[rows], multimask_output=True)
            torch.testing.assert_close(masks[rows], m, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(iou[rows], q, atol=1e-5, rtol=1e-5)
        if prompts == 1:  # SAM's own decoder pairs every image with every prompt: B x B rows
            with pytest.raises(RuntimeError):
                stock(images, pe, sparse, dense, multimask_output=True)


def official_parts():
    """A prompt encoder and mask decoder built as segment-anything's build_sam builds them (vit_b/l/h)."""
    pe = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16)
    dec = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048,
                                                                             num_heads=8),
                      transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
    return pe, dec


def test_a_sam_checkpoint_loads_its_decoder_and_prompt_encoder_strictly(tmp_path):
    torch.manual_seed(1)
    pe, dec = official_parts()
    state = {f"prompt_encoder.{k}": v for k, v in pe.state_dict().items()}
    state.update({f"mask_decoder.{k}": v for k, v in dec.state_dict().items()})
    state["image_encoder.patch_embed.proj.weight"] = torch.zeros(768, 3, 16, 16)
    path = tmp_path / "sam_vit_b.pth"
    torch.save(state, path)
    ours_pe, ours_dec = build_prompt_encoder("vit_b", 64, 1024), build_mask_decoder("vit_b")
    counts = load_sam_parts(path, ours_pe, ours_dec)
    assert counts == {"prompt_encoder": len(pe.state_dict()), "mask_decoder": len(dec.state_dict())}
    for k, v in dec.state_dict().items():
        assert torch.equal(ours_dec.state_dict()[k], v), k
    with pytest.raises(ValueError, match="shapes"):
        load_sam_parts(path, build_prompt_encoder("tiny", 8, 32), build_mask_decoder("tiny"))
    del state["mask_decoder.iou_token.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="missing \\['iou_token.weight'\\]"):
        load_sam_parts(path, ours_pe, ours_dec)
    with pytest.raises(ValueError, match="unknown SAM type 'vit_x'.*vit_b"):
        build_mask_decoder("vit_x")


@pytest.fixture(scope="module")
def heads():
    torch.manual_seed(0)
    backbone = create("dinov2_tiny", img_size=28)
    tower = create_text_tower("clip_tiny")
    return backbone, tower, TextPromptHeads(backbone.embed_dim, tower, "tiny", grid=8, image_size=28)


def test_two_prompts_give_two_masks_and_the_text_projection_learns(heads):
    backbone, tower, h = heads
    image = torch.randn(1, 3, 28, 28)
    feats = backbone(image.expand(2, -1, -1, -1))
    tokens = tower.tokenizer(["a circle", "a square"])
    out = h(feats, {"text_tokens": tokens})
    assert out["masks"].shape == (2, 32, 32) and out["iou"].shape == (2,)
    with torch.no_grad():
        same = h(feats, {"text_tokens": tower.tokenizer(["a circle", "a circle"])})["masks"]
    # the same image and prompt: the same mask, up to the float noise of batched kernels (rows are summed in
    # different orders); another prompt: a mask at least 100x further apart than that noise
    noise = float((same[0] - same[1]).abs().max())
    assert noise <= 1e-6
    assert float((out["masks"][0] - out["masks"][1]).abs().max()) > max(100 * noise, 1e-6)
    h.zero_grad()
    out["masks"].square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in h.text_proj.parameters())
    assert all(p.grad is None for p in h.frozen.parameters()) and not any(p.requires_grad for p in h.frozen.parameters())
    h.zero_grad()


def test_points_and_boxes_join_the_text_tokens(heads):
    backbone, tower, h = heads
    feats = backbone(torch.randn(2, 3, 28, 28))
    inputs = {"text_tokens": tower.tokenizer(["a circle", "a circle"]), "points": torch.tensor([[[5.0, 5.0]]] * 2),
              "point_labels": torch.ones(2, 1), "boxes": torch.tensor([[2.0, 2.0, 20.0, 20.0]] * 2)}
    sparse = h.prompt_tokens(h.frozen["text"](inputs["text_tokens"]), inputs)
    assert sparse.shape == (2, 2 + 1 + 2, h.dim)
    assert h(feats, inputs)["masks"].shape == (2, 32, 32)
    with pytest.raises(ValueError, match="text_tokens"):
        h(feats, {})


def test_the_frozen_text_tower_is_in_no_optimiser_group(heads):
    from prism.adapters.stages import parameter_groups
    from prism.engine.model import TaskModel

    backbone, _, h = heads
    groups = parameter_groups(TaskModel(backbone, h))
    grouped = set().union(*groups.values())
    assert not any(n.startswith("heads.frozen.") for n in grouped)
    assert any(n.startswith("heads.text_proj.") for n in groups["head"])
    h.train()
    assert not h.frozen["text"].training
