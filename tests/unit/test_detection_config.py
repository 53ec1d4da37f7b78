"""Detection presets: standard (6 layers, 100 queries) and lightweight (2 layers, 25 queries, fewer points,
smaller dims) build heads of those sizes; overrides apply; bad values are named."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from prism.tasks.detection.config import DetectionTaskConfig
from prism.tasks.detection.model import build_detection_heads, count_parameters


@pytest.mark.parametrize(("preset", "layers", "queries", "points"), [("standard", 6, 100, 4), ("lightweight", 2, 25, 2)])
def test_presets_build_heads_of_their_size(preset, layers, queries, points):
    cfg = DetectionTaskConfig(decoder={"preset": preset})
    heads = build_detection_heads(cfg.decoder, embed_dim=48, classes=3)
    assert len(heads.decoder.layers) == layers and heads.decoder.query_embed.num_embeddings == queries
    assert heads.decoder.layers[0].cross_attn.points == points
    out = heads({"patches": torch.randn(1, 4, 4, 48)})
    assert out["logits"].shape == (1, queries, 3) and len(out["aux"]) == layers - 1


def test_lightweight_is_smaller_and_overrides_apply():
    std = count_parameters(build_detection_heads(DetectionTaskConfig().decoder, 48, 3))
    light = count_parameters(build_detection_heads(DetectionTaskConfig(decoder={"preset": "lightweight"}).decoder, 48, 3))
    assert light < std / 4
    cfg = DetectionTaskConfig(decoder={"preset": "lightweight", "queries": 7, "scales": [1.0]})
    assert cfg.decoder.resolved()["queries"] == 7 and cfg.decoder.resolved()["layers"] == 2
    with pytest.raises(ValidationError, match="divisible by its 3 heads"):
        DetectionTaskConfig(decoder={"dim": 64, "heads": 3})
    with pytest.raises(ValidationError, match="scales"):
        DetectionTaskConfig(decoder={"scales": [3.0]})


def test_coco2017_names_its_80_categories_without_the_files():
    from prism.config import JobConfig

    cfg = JobConfig.model_validate({
        "task": {"name": "detection", "categories": "coco2017"}, "backbone": {"name": "dinov2_tiny", "img_size": 28},
        "stages": [{"kind": "probe", "epochs": 1, "lr": {"head": 1e-3}}],
        "data": {"source": "coco", "coco": {"train": "/nowhere/instances_train2017.json"}}})
    ids = [c["id"] for c in cfg.task.categories]
    assert len(ids) == 80 and ids == sorted(set(ids)) and (ids[0], ids[-1]) == (1, 90)
    assert {12, 26, 29, 30, 45, 66, 68, 69, 71, 83} & set(ids) == set()  # the paper's ids without boxes
    names = {c["id"]: c["name"] for c in cfg.task.categories}
    assert (names[1], names[18], names[90]) == ("person", "dog", "toothbrush")
