"""Checkpoint formats accepted by `weights=` (prism.backbones.weights), on the tiny variants."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from open_clip.model import CLIP
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from prism.backbones import create_backbone, load_weights, state_dict_sha256

TIMM_TINY = ["dinov2_tiny", "dinov2_tiny_reg", "dino_tiny"]


def _assert_loaded(source, loaded) -> None:
    """`loaded` (a Backbone) holds exactly the tensors of `source` (a Backbone)."""
    expected, actual = source.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert loaded.weights_sha256 == source.weights_sha256 == state_dict_sha256(loaded)


def _save(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def _dinov2_original(
    timm_state: dict[str, torch.Tensor], chunks: int = 0, swiglu: bool = False
) -> dict[str, torch.Tensor]:
    """timm DINOv2 state dict -> facebookresearch/dinov2 layout (mask_token, register_tokens, w12/w3, chunks)."""
    state = dict(timm_state)
    dim = state["cls_token"].shape[-1]
    state["mask_token"] = torch.zeros(1, dim)
    if (
        "reg_token" in state
    ):  # original keeps the class position in pos_embed; zero makes the round trip exact
        state["register_tokens"] = state.pop("reg_token")
        state["pos_embed"] = torch.cat([torch.zeros(1, 1, dim), state["pos_embed"]], dim=1)
    out = {}
    for key, value in state.items():
        if swiglu:  # ViT-g uses SwiGLUFFNFused, whose packed layers are named w12 / w3
            key = key.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3")
        match = re.match(r"blocks\.(\d+)\.(.*)", key)
        if chunks and match:
            index = int(match.group(1))
            key = f"blocks.{index % chunks}.{index}.{match.group(2)}"
        out[key] = value
    return out


@pytest.mark.parametrize("name", TIMM_TINY)
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_format_round_trip(tmp_path, name, suffix):
    source = create_backbone(name, seed=1)
    path = _save(source.model.state_dict(), tmp_path / f"w{suffix}")
    loaded = create_backbone(name, weights=path, seed=2)
    _assert_loaded(source, loaded)


@pytest.mark.parametrize("name", ["dinov2_tiny", "clip_tiny"])
def test_backbone_and_task_model_state_dicts_load(tmp_path, name):
    source = create_backbone(name, seed=1)
    own = _save(source.state_dict(), tmp_path / "own.pt")
    task = {f"backbone.{k}": v for k, v in source.state_dict().items()} | {
        "heads.fc.weight": torch.ones(2, 2)
    }
    nested = _save(
        {"state_dict": {f"module.{k}": v for k, v in task.items()}, "epoch": 3}, tmp_path / "task.pt"
    )
    _assert_loaded(source, create_backbone(name, weights=own))
    _assert_loaded(source, create_backbone(name, weights=nested))


@pytest.mark.parametrize("name", ["dinov2_tiny", "dinov2_tiny_reg"])
@pytest.mark.parametrize("chunks", [0, 2])
def test_dinov2_original_format(tmp_path, name, chunks):
    source = create_backbone(name, seed=1)
    original = _dinov2_original(source.model.state_dict(), chunks)
    assert "mask_token" in original and ("register_tokens" in original) == name.endswith("_reg")
    loaded = create_backbone(name, weights=_save(original, tmp_path / "orig.pth"))
    _assert_loaded(source, loaded)


def test_dinov2_giant_swiglu_original_format(tmp_path):
    kwargs = {"embed_dim": 48, "depth": 2, "num_heads": 2, "img_size": 56}
    source = create_backbone("dinov2_vitg14_reg", seed=1, **kwargs)
    original = _dinov2_original(source.model.state_dict(), swiglu=True)
    assert any(".mlp.w12." in k for k in original) and any(".mlp.w3." in k for k in original)
    _assert_loaded(
        source, create_backbone("dinov2_vitg14_reg", weights=_save(original, tmp_path / "g.pth"), **kwargs)
    )


def test_dino_original_formats(tmp_path):
    source = create_backbone("dino_tiny", seed=1)
    state = source.model.state_dict()  # the released DINO backbone files use these very keys
    head = {"head.mlp.0.weight": torch.ones(4, 48), "head.last_layer.weight_g": torch.ones(8, 1)}
    teacher = {f"module.backbone.{k}": v for k, v in state.items()} | {
        f"module.{k}": v for k, v in head.items()
    }
    training = {"teacher": teacher, "student": teacher, "epoch": 100}
    _assert_loaded(source, create_backbone("dino_tiny", weights=_save(state, tmp_path / "dino.pth")))
    _assert_loaded(source, create_backbone("dino_tiny", weights=_save(training, tmp_path / "checkpoint.pth")))


def _tiny_clip(img_size: int = 64, seed: int = 5) -> CLIP:
    """A full open_clip CLIP (random init, text tower included) whose image tower is clip_tiny's."""
    vision = {"width": 48, "layers": 3, "head_width": 24, "patch_size": 16, "image_size": img_size}
    text = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIP(embed_dim=512, vision_cfg=vision, text_cfg=text, quick_gelu=True).eval()


def _clip_holding(source) -> CLIP:
    """`_tiny_clip` whose image tower holds `source`'s weights, projection included."""
    clip = _tiny_clip(source.img_size)
    clip.visual.load_state_dict(source.model.state_dict(), strict=True)
    return clip


@pytest.mark.parametrize("layout", ["full", "nested", "visual"])
def test_open_clip_formats(tmp_path, layout):
    source = create_backbone("clip_tiny", seed=1)
    clip = _clip_holding(source)
    state = {"full": clip.state_dict(), "visual": clip.visual.state_dict()}.get(layout)
    if layout == "nested":
        state = {"state_dict": {f"module.{k}": v for k, v in clip.state_dict().items()}}
    assert layout == "visual" or any(
        k.startswith("text") or k == "token_embedding.weight" for k in clip.state_dict()
    )
    _assert_loaded(source, create_backbone("clip_tiny", weights=_save(state, tmp_path / "clip.pt")))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_clip_embedding_is_encode_image_of_the_loaded_clip(tmp_path, suffix):
    clip = _tiny_clip()
    path = _save(clip.state_dict(), tmp_path / f"clip{suffix}")  # a full CLIP, text tower included
    backbone = create_backbone("clip_tiny", weights=path).eval()
    assert backbone.embedding_dim == 512 and torch.equal(backbone.model.proj, clip.visual.proj)
    assert "model.proj" in backbone.state_dict() and "proj" in backbone.model.state_dict()
    without_proj = copy.deepcopy(clip.visual)  # how the tower ran before it kept its projection
    without_proj.proj, without_proj.output_tokens = None, True
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = backbone(x)
        expected = clip.encode_image(x)  # (B, 512), not normalised
        cls, patches = without_proj(x)  # (B, 48), (B, 16, 48)
    assert out["embedding"].shape == expected.shape == (2, 512)
    torch.testing.assert_close(out["embedding"], expected, rtol=0, atol=1e-5)
    assert out["cls"].shape == (2, 48) and out["patches"].shape == (2, 4, 4, 48)
    torch.testing.assert_close(out["cls"], cls, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["patches"].reshape(2, 16, 48), patches, rtol=0, atol=1e-6)


def test_open_clip_weights_without_the_projection_are_refused(tmp_path):
    state = _tiny_clip().visual.state_dict()
    del state["proj"]  # what a visual tower saved with proj = None holds
    with pytest.raises(ValueError, match=r"missing keys: proj\b"):
        create_backbone("clip_tiny", weights=_save(state, tmp_path / "visual.pth"))


@pytest.mark.parametrize("name", TIMM_TINY)
def test_timm_pos_embed_is_resampled_for_another_img_size(tmp_path, name):
    source = create_backbone(name, seed=1, img_size=6 * (14 if "dinov2" in name else 16))
    path = _save(source.model.state_dict(), tmp_path / "w.safetensors")
    loaded = create_backbone(name, weights=path)  # default img_size: a 4x4 grid
    prefix = 0 if source.model.no_embed_class else 1
    expected = resample_abs_pos_embed(source.model.pos_embed, new_size=(4, 4), num_prefix_tokens=prefix)
    assert loaded.model.pos_embed.shape == expected.shape
    torch.testing.assert_close(loaded.model.pos_embed, expected)
    other = {k: v for k, v in source.state_dict().items() if k != "model.pos_embed"}
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in other.items())
    assert loaded.weights_sha256 != source.weights_sha256
    assert loaded(torch.zeros(1, 3, loaded.img_size, loaded.img_size))["patches"].shape[1:3] == (4, 4)


def test_open_clip_pos_embed_is_resized_for_another_img_size(tmp_path):
    source = create_backbone("clip_tiny", seed=1, img_size=96)
    path = _save(_clip_holding(source).state_dict(), tmp_path / "clip.safetensors")
    loaded = create_backbone("clip_tiny", weights=path)
    assert loaded.model.positional_embedding.shape == (1 + 16, 48)
    torch.testing.assert_close(loaded.model.positional_embedding[0], source.model.positional_embedding[0])
    assert loaded(torch.zeros(1, 3, 64, 64))["patches"].shape == (1, 4, 4, 48)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("blocks.1.attn.qkv.weight"), "missing keys: blocks.1.attn.qkv.weight"),
        (lambda s: s.update({"extra.weight": torch.ones(1)}), "unexpected keys: extra.weight"),
        (lambda s: s.update({"norm.weight": torch.ones(7)}), r"shape mismatches: norm.weight \(7,\)"),
    ],
)
def test_strict_loading_names_the_bad_keys(tmp_path, edit, message):
    state = create_backbone("dinov2_tiny").model.state_dict()
    edit(state)
    with pytest.raises(ValueError, match=message):
        create_backbone("dinov2_tiny", weights=_save(state, tmp_path / "bad.pth"))


def test_weights_for_another_architecture_are_rejected():
    state = create_backbone("dinov2_tiny").state_dict()
    with pytest.raises(ValueError, match="shape mismatches"):
        load_weights(create_backbone("dinov2_tiny", embed_dim=64), state)


@pytest.mark.parametrize("filename", ["missing.pth", "weights.npz"])
def test_bad_weights_path_is_a_value_error(tmp_path, filename):
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="weights file"):
        create_backbone("dinov2_tiny", weights=tmp_path / filename)


class _OpensAFile:
    """Unpickling this calls ``open(path, "w")``: the file appears only if the pickle's code ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin"])
def test_pickled_code_in_a_weights_file_is_refused_not_run(tmp_path, monkeypatch, suffix):
    """weights_only=True is passed explicitly: even TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, which flips torch.load
    calls that leave it unset, does not let a checkpoint run code."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "ran"
    state = {**create_backbone("dinov2_tiny").model.state_dict(), "payload": _OpensAFile(marker)}
    path = tmp_path / f"evil{suffix}"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"holds Python objects, not only tensors \(.*open\).*state_dict"):
        create_backbone("dinov2_tiny", weights=path)
    assert not marker.exists()
