"""The model bundle: what a checkpoint and a registered model version hold, and how to rebuild the model.

A bundle (format version 2) is a directory::

    manifest.json         format version, task, sha256 + size of every file below, and a sha256 + source
                          for every frozen component (backbone weights; a task's text encoder, decoder, …)
    weights.safetensors   adapted parameters only: heads + LoRA of every site (+ what unfreeze stages trained)
    config.yaml           the resolved job config that built the model
    labels.json           the task's label maps
    backbone.json         backbone name, weights_sha256 of the base weights, img size, weight source
    metrics.json          the checkpoint's metrics and the validation split's fingerprint (when trained)
    artifacts/…           files the task adds (:meth:`Task.artifacts`: text embeddings, a PCA basis, …)

Frozen components are *not* in the bundle: they are rebuilt from ``config.yaml`` (hub, local file, or a
seeded random init) and checked against their recorded sha256, so a bundle never silently loads onto the
wrong base model. :func:`write_bundle` writes one; :func:`stage_bundle` copies one (what the driver and Tune
register), checking every file; :func:`load_bundle` rebuilds the model. Version-1 bundles (no manifest)
still load.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from prism.config import JobConfig, dump_config

if TYPE_CHECKING:
    from torch import nn

    from prism.tasks.base import Task

__all__ = ["BUNDLE_FORMAT", "MANIFEST_FILE", "V1_FILES", "WEIGHTS_FILE", "bundle_files", "load_bundle",
           "read_bundle_config", "read_manifest", "rewrite_task_files", "stage_bundle", "write_bundle"]

BUNDLE_FORMAT = 2
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
ARTIFACTS_DIR = "artifacts"
V1_FILES = (WEIGHTS_FILE, "config.yaml", "labels.json", "backbone.json")
"""Files of a version-1 bundle (no manifest); ``metrics.json`` next to them when it was trained."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def backbone_source(cfg: JobConfig) -> str:
    """Where the backbone's base weights come from, as the manifest records it."""
    b = cfg.backbone
    if b.weights is not None:
        return f"file:{b.weights}"
    return f"pretrained:{b.name}" if b.pretrained else f"random-init:{b.name}:seed={b.seed}"


def write_bundle(path: Path, cfg: JobConfig, task: Task, model: nn.Module, names: Iterable[str], *,
                 metrics: Mapping[str, Any] | None = None, metadata: Mapping[str, str] | None = None) -> Path:
    """Write a complete bundle of ``model`` into ``path``: the parameters ``names`` (what the plan trains),
    config, label maps, backbone record, ``metrics`` (→ ``metrics.json``), the task's artifacts and, last,
    the manifest over all of them. ``metadata`` goes into the safetensors header. Returns ``path``."""
    from prism.adapters import save_adapted

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_adapted(path / WEIGHTS_FILE, model, names, metadata=dict(metadata or {}))
    (path / "config.yaml").write_text(dump_config(cfg))
    (path / "labels.json").write_text(json.dumps(task.label_maps(), indent=2))
    bb = model.backbone
    (path / "backbone.json").write_text(json.dumps({
        "name": bb.name, "family": bb.family, "weights_sha256": bb.weights_sha256,
        "img_size": bb.img_size, "patch_size": bb.patch_size, "embed_dim": bb.embed_dim,
        "pretrained": cfg.backbone.pretrained,
        "weights": None if cfg.backbone.weights is None else str(cfg.backbone.weights),
        "lora": None if cfg.lora is None else cfg.lora.model_dump(mode="json"),
    }, indent=2))
    files = [WEIGHTS_FILE, "config.yaml", "labels.json", "backbone.json"]
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(dict(metrics), default=float))
        files.append("metrics.json")
    for rel, data in sorted(task.artifacts(model).items()):
        target = path / ARTIFACTS_DIR / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise ValueError(f"task artifact name {rel!r} must be a relative path inside the bundle")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        files.append(f"{ARTIFACTS_DIR}/{rel}")
    components = {"backbone": {"sha256": bb.weights_sha256, "source": backbone_source(cfg)},
                  **task.components(model)}
    manifest = {
        "format": BUNDLE_FORMAT, "task": task.name, "created": datetime.now(UTC).isoformat(),
        "files": {f: {"sha256": file_sha256(path / f), "bytes": (path / f).stat().st_size} for f in files},
        "components": components,
    }
    (path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return path


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The bundle's manifest, or None for a version-1 bundle."""
    file = Path(path) / MANIFEST_FILE
    return json.loads(file.read_text()) if file.is_file() else None


def bundle_files(path: Path, verify: bool = True) -> list[str]:
    """The files of the bundle at ``path`` (relative names, manifest included for version 2).

    ``verify``: every file the manifest lists must exist with its recorded sha256 (``ValueError`` naming
    the first that does not). Version 1: :data:`V1_FILES` (+ ``metrics.json`` if present).
    """
    path = Path(path)
    manifest = read_manifest(path)
    if manifest is None:
        missing = [f for f in V1_FILES if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} is not a Prism model bundle: no {MANIFEST_FILE} and missing {missing}")
        return [*V1_FILES, *(["metrics.json"] if (path / "metrics.json").is_file() else [])]
    if int(manifest.get("format", 0)) > BUNDLE_FORMAT:
        raise ValueError(f"{path}: bundle format {manifest['format']} is newer than this Prism reads "
                         f"({BUNDLE_FORMAT}); upgrade Prism")
    if verify:
        for rel, info in manifest["files"].items():
            file = path / rel
            if not file.is_file():
                raise ValueError(f"{path}: bundle file {rel} listed in {MANIFEST_FILE} is missing")
            if file_sha256(file) != info["sha256"]:
                raise ValueError(f"{path}: {rel} does not match the sha256 in {MANIFEST_FILE}; the bundle was "
                                 "changed after it was written")
    return [*manifest["files"], MANIFEST_FILE]


def stage_bundle(src: Path, dst: Path) -> Path:
    """Copy the bundle at ``src`` (e.g. a checkpoint, which also holds optimizer and state) to ``dst``,
    verified, with only its bundle files. What the driver and Tune register. Returns ``dst``."""
    src, dst = Path(src), Path(dst)
    for rel in bundle_files(src):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)
    return dst


def read_bundle_config(path: Path) -> JobConfig:
    """The :class:`JobConfig` stored in a bundle."""
    cfg_file = Path(path) / "config.yaml"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path} is not a Prism model bundle: no config.yaml (expected {V1_FILES})")
    return JobConfig.model_validate(yaml.safe_load(cfg_file.read_text()))


def load_bundle(path: Path, device: str | torch.device = "cpu", merge: bool = False
                ) -> tuple[JobConfig, Task, nn.Module]:
    """Rebuild ``(config, task, model)`` from a bundle, in eval mode on ``device``.

    ``merge=True`` folds the LoRA adapters into the base weights (:func:`prism.adapters.merge_lora`): the
    model predicts the same up to float rounding without peft's extra low-rank matmuls in every adapted
    layer (what a predictor wants; resuming training or exporting needs the adapters, so not the default).

    Raises ``ValueError`` when a file differs from its manifest entry, or when the rebuilt base weights (or
    a task component) differ from the ones the bundle was trained on.
    """
    from prism.adapters import load_adapted, merge_lora
    from prism.engine.model import build_model
    from prism.tasks import build_task

    path = Path(path)
    bundle_files(path)  # verifies the manifest's hashes (version 2)
    manifest = read_manifest(path) or {}
    cfg = read_bundle_config(path)
    meta = json.loads((path / "backbone.json").read_text())
    task = build_task(cfg)
    model = build_model(cfg, task)
    got = model.backbone.weights_sha256
    if meta.get("weights_sha256") and got != meta["weights_sha256"]:
        raise ValueError(
            f"base weights of backbone '{meta['name']}' differ from the ones this model was trained on "
            f"(sha256 {got[:12]}… vs {meta['weights_sha256'][:12]}…). Load the same weights "
            f"(backbone.weights={meta.get('weights')}, pretrained={meta.get('pretrained')})."
        )
    load_adapted(path / WEIGHTS_FILE, model, strict=True)
    artifacts = {rel.removeprefix(f"{ARTIFACTS_DIR}/"): (path / rel).read_bytes()
                 for rel in (manifest.get("files") or {}) if rel.startswith(f"{ARTIFACTS_DIR}/")}
    task.load_artifacts(model, artifacts)  # before the check: which components a task has may depend on them
    now = task.components(model)
    for name, recorded in (manifest.get("components") or {}).items():
        if name == "backbone":
            continue
        got = now.get(name, {}).get("sha256")
        if got != recorded.get("sha256"):
            raise ValueError(f"component {name!r} ({recorded.get('source')}) differs from the one this model was "
                             f"trained with (sha256 {str(got)[:12]}… vs {str(recorded.get('sha256'))[:12]}…)")
    if merge:
        merge_lora(model)
    return cfg, task, model.to(device).eval()


def rewrite_task_files(path: Path, task: Task, model: nn.Module) -> Path:
    """Rewrite the task's files of the bundle at ``path`` (``labels.json``, ``artifacts/…``) from ``task`` —
    e.g. after zero-shot classes were added to it — and its manifest (file hashes, components). The weights,
    config and backbone record stay as they are. Returns ``path``."""
    path = Path(path)
    manifest = read_manifest(path)
    if manifest is None:
        raise ValueError(f"{path}: a version-1 bundle (no {MANIFEST_FILE}) cannot hold artifacts; retrain or "
                         "re-export it")
    bundle_files(path)
    (path / "labels.json").write_text(json.dumps(task.label_maps(), indent=2))
    files = [f for f in manifest["files"] if not f.startswith(f"{ARTIFACTS_DIR}/")]
    shutil.rmtree(path / ARTIFACTS_DIR, ignore_errors=True)
    for rel, data in sorted(task.artifacts(model).items()):
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise ValueError(f"task artifact name {rel!r} must be a relative path inside the bundle")
        (path / ARTIFACTS_DIR / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / ARTIFACTS_DIR / rel).write_bytes(data)
        files.append(f"{ARTIFACTS_DIR}/{rel}")
    manifest["files"] = {f: {"sha256": file_sha256(path / f), "bytes": (path / f).stat().st_size} for f in files}
    manifest["components"] = {"backbone": manifest["components"]["backbone"], **task.components(model)}
    (path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return path
