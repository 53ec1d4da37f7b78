"""Model bundles round-trip (adapted weights only) and export merges LoRA into loadable plain weights."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from prism.inference.bundle import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    bundle_files,
    load_bundle,
    read_manifest,
    stage_bundle,
)
from tests.helpers.bundles import build_bundle


@pytest.fixture
def bundle(tmp_path):
    """(folder, model in eval mode, names of the saved parameters) of a circles bundle after "training"."""
    made = build_bundle(tmp_path, std=0.05)
    return tmp_path, made.model, made.names


def test_bundle_holds_only_adapted_weights_and_round_trips(bundle):
    path, model, names = bundle
    saved = load_file(str(path / WEIGHTS_FILE))
    assert set(saved) == set(names)
    assert all(".lora_" in k or k.startswith("heads.") for k in saved)  # no base backbone tensors
    meta = json.loads((path / "backbone.json").read_text())
    assert meta["weights_sha256"] == model.backbone.weights_sha256
    _, _, rebuilt = load_bundle(path)
    x = {"image": torch.randn(3, 3, 64, 64)}
    with torch.no_grad():
        a, b = model(x), rebuilt(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_manifest_records_every_file_and_the_backbone(bundle):
    path, model, _ = bundle
    manifest = read_manifest(path)
    assert manifest["format"] == 2 and manifest["task"] == "multihead"
    assert set(manifest["files"]) == {WEIGHTS_FILE, "config.yaml", "labels.json", "backbone.json"}
    for rel, info in manifest["files"].items():
        assert info["sha256"] == hashlib.sha256((path / rel).read_bytes()).hexdigest()
    assert manifest["components"]["backbone"] == {"sha256": model.backbone.weights_sha256,
                                                  "source": "random-init:dinov2_tiny_conv:seed=0"}


def test_a_changed_file_is_refused_by_the_manifest(bundle):
    path, _, _ = bundle
    labels = path / "labels.json"
    labels.write_text(labels.read_text().replace("circle", "square"))
    with pytest.raises(ValueError, match="labels.json does not match the sha256 in manifest.json"):
        load_bundle(path)


def test_bundle_refuses_other_base_weights(bundle):
    """A version-1 bundle (no manifest) still loads, and still refuses another base model."""
    path, model, _ = bundle
    (path / MANIFEST_FILE).unlink()
    _, _, rebuilt = load_bundle(path)
    x = {"image": torch.randn(2, 3, 64, 64)}
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))
    cfg_file = path / "config.yaml"
    cfg_file.write_text(cfg_file.read_text().replace("seed: 0", "seed: 1", 1))
    with pytest.raises(ValueError, match="differ from the ones this model was trained on"):
        load_bundle(path)


def test_stage_bundle_copies_the_bundle_files_only(bundle, tmp_path_factory):
    path, _, _ = bundle
    (path / "optimizer.pt").write_bytes(b"not part of a bundle")
    out = stage_bundle(path, tmp_path_factory.mktemp("staged") / "bundle")
    assert sorted(p.name for p in out.iterdir()) == sorted(bundle_files(path))
    assert not (out / "optimizer.pt").exists()
    (path / WEIGHTS_FILE).write_bytes(b"truncated")
    with pytest.raises(ValueError, match="weights.safetensors does not match"):
        stage_bundle(path, tmp_path_factory.mktemp("again"))


def test_export_merges_lora_into_plain_backbone_weights(bundle, tmp_path_factory):
    from prism.backbones import create_backbone
    from prism.inference.export import export_merged

    path, model, _ = bundle
    out = export_merged(str(path), tmp_path_factory.mktemp("export"))
    backbone = create_backbone("dinov2_tiny_conv", weights=out / "backbone.safetensors", img_size=64)
    assert not any(".lora_" in n for n, _ in backbone.named_parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.backbone(x)["cls"]
        got = backbone(x)["cls"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert set(load_file(str(out / "heads.safetensors"))) == {k.removeprefix("heads.") for k in model.state_dict()
                                                             if k.startswith("heads.")}


def test_a_probe_only_plan_of_a_model_with_lora_writes_a_loadable_bundle(tmp_path):
    """LoRA configured but never trained (a probe-only plan): the bundle still holds the adapters it builds,
    so it loads strictly and predicts as the model did (the names a plan trains alone are not enough)."""
    from prism.adapters import bundle_names, lora_parameter_names, trainable_names_union
    from prism.config import load_config
    from prism.engine.model import build_model
    from prism.inference.bundle import write_bundle
    from prism.tasks import build_task
    from tests.conftest import CIRCLES_JOB

    cfg = load_config(CIRCLES_JOB, ["backbone.img_size=64", "stages=[{kind: probe, epochs: 1, lr: {head: 1e-3}}]"])
    task = build_task(cfg)
    model = build_model(cfg, task).eval()
    lora = lora_parameter_names(model)
    assert lora and not lora & trainable_names_union(model, cfg.stages)
    with pytest.raises(ValueError, match="missing"):
        load_bundle(write_bundle(tmp_path / "union", cfg, task, model, trainable_names_union(model, cfg.stages)))
    _, _, rebuilt = load_bundle(write_bundle(tmp_path / "bundle", cfg, task, model, bundle_names(model, cfg.stages)))
    x = {"image": torch.randn(2, 3, 64, 64)}
    with torch.no_grad():
        a, b = model(x), rebuilt(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
