"""Zero-shot by CLIP text: Prism's class embeddings and scores equal open_clip's own zero-shot classifier."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from safetensors.torch import save_file

from prism.backbones import create_backbone
from prism.backbones.clip_text import create_text_tower
from prism.tasks.classify.zeroshot import DEFAULT_TEMPLATES, text_class_embeddings, zero_shot_probs

CLASSES = ["cat", "dog", "house", "bicycle", "the moon"]


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """A whole open_clip CLIP (clip_tiny's image and text architecture), random weights, saved as one file."""
    cfg = open_clip.get_model_config("ViT-B-16-quickgelu")
    torch.manual_seed(3)
    model = open_clip.create_model(
        "ViT-B-16-quickgelu",
        vision_cfg={**cfg["vision_cfg"], "width": 48, "layers": 3, "head_width": 24, "image_size": 64},
        text_cfg={**cfg["text_cfg"], "width": 32, "heads": 2, "layers": 2},
    ).eval()
    path = tmp_path_factory.mktemp("clip") / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_text_classifier_equals_open_clips(clip_file):
    model, path = clip_file
    tower = create_text_tower("clip_tiny", weights=path)
    tokenizer = open_clip.get_tokenizer("ViT-B-16-quickgelu")
    reference = build_zero_shot_classifier(model, tokenizer, CLASSES, DEFAULT_TEMPLATES, num_classes_per_batch=2)
    ours = text_class_embeddings(tower, CLASSES)
    assert ours.shape == (len(CLASSES), 512)
    torch.testing.assert_close(ours, reference.T, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(ours[0], ours[1], atol=1e-3)  # the names matter


def test_zero_shot_scores_equal_open_clips_logits(clip_file):
    model, path = clip_file
    backbone = create_backbone("clip_tiny", weights=path).eval()
    tower = create_text_tower("clip_tiny", weights=path)
    classifier = text_class_embeddings(tower, CLASSES)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = zero_shot_probs(backbone(x)["embedding"], classifier, scale=float(model.logit_scale.exp()))
        image = model.encode_image(x, normalize=True)
        reference = (model.logit_scale.exp() * image @ classifier.T).softmax(dim=-1)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)


def test_text_tower_refuses_what_it_cannot_load(tmp_path, clip_file):
    with pytest.raises(ValueError, match="has no text tower; CLIP backbones: clip_tiny"):
        create_text_tower("dinov2_tiny")
    model, _ = clip_file
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("ln_final")}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="missing keys: ln_final.bias, ln_final.weight"):
        create_text_tower("clip_tiny", weights=tmp_path / "w.safetensors")
    tower = create_text_tower("clip_tiny")
    assert not any(p.requires_grad for p in tower.parameters()) and not tower.train().training
