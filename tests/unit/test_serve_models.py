"""Fabricated registered models for the Serve tests (no training), and checks that they are usable.

The helpers are imported by ``tests/*/test_serve*.py``: two versions of one registered model whose heads
differ (so a promotion visibly changes predictions), a few small PNGs, and a crafted decompression bomb.
"""

from __future__ import annotations

import struct
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tests.conftest import CIRCLES_JOB

MODEL_NAME = "circles-serve"
PLAN = "stages=[{kind: probe, epochs: 1, lr: {head: 1e-3}}, {kind: lora, epochs: 1, lr: {head: 1e-3, lora: 1e-3}}]"
IMG_SIZE = 56
PIP = ["mlflow"]  # explicit and tiny: the tests never restore an environment

# MLflow's own SQLAlchemy store triggers this at start-up; nothing in prism can change it.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


def fabricate_bundle(path: Path, seed: int) -> Path:
    """A model bundle of the circles job on ``dinov2_tiny`` at 56 px; ``seed`` draws the LoRA B and head weights."""
    from prism.adapters import save_adapted, trainable_names_union
    from prism.bundle import WEIGHTS_FILE, write_bundle_meta
    from prism.config import load_config
    from prism.tasks import build_task

    cfg = load_config(CIRCLES_JOB, [PLAN, f"backbone.img_size={IMG_SIZE}"])
    task = build_task(cfg)
    model = task.build_model()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or name.startswith("heads."):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    write_bundle_meta(path, cfg, task, model)
    save_adapted(path / WEIGHTS_FILE, model, sorted(trainable_names_union(model, cfg.stages)))
    return path


@dataclass(frozen=True)
class Registry:
    """A SQLite MLflow store holding ``MODEL_NAME`` v1 (champion) and v2 (registered, not promoted)."""

    tracking_uri: str
    bundles: dict[int, Path]

    @property
    def champion(self) -> str:
        return f"models:/{MODEL_NAME}@champion"


@contextmanager
def registry(root: Path):
    """Fabricate and register two versions in a fresh store under ``root``; MLflow's global state restored after."""
    import mlflow

    from prism.tracking import (
        configure_tracking,
        get_or_create_experiment,
        promote_if_better,
        register_bundle,
    )

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mp.setenv("MLFLOW_TRACKING_URI", "unused")  # so the context restores it: MLflow exports the URI
        mp.setenv("MLFLOW_REGISTRY_URI", "unused")
        uri = configure_tracking(f"sqlite:///{root}/mlflow.db")
        experiment = get_or_create_experiment("serve-tests")
        bundles = {}
        for version, (seed, score) in enumerate([(1, 0.5), (2, 0.6)], start=1):
            bundles[version] = fabricate_bundle(root / f"bundle-v{version}", seed)
            with mlflow.start_run(experiment_id=experiment) as run:
                mlflow.log_metric("val/macro_f1", score)
            mv = register_bundle(bundles[version], MODEL_NAME, run_id=run.info.run_id, metric="val/macro_f1",
                                 value=score, mode="max", pip_requirements=PIP)
            assert int(mv.version) == version
        assert promote_if_better(MODEL_NAME, 1)
        yield Registry(uri, bundles)
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def sample_images(folder: Path, n: int = 4, seed: int = 0) -> list[Path]:
    """``n`` small PNGs (ellipses on noise, sizes 60-100 px) in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        size = int(rng.integers(60, 100))
        img = Image.fromarray(rng.integers(180, 255, (size, size, 3), dtype=np.uint8))
        box = sorted(rng.integers(5, size - 5, 2).tolist()) + sorted(rng.integers(5, size - 5, 2).tolist())
        ImageDraw.Draw(img).ellipse([box[0], box[2], box[1] + 1, box[3] + 1], outline=(0, 0, 0), width=3)
        paths.append(folder / f"img_{i}.png")
        img.save(paths[-1])
    return paths


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header (IHDR) claiming ``width x height`` RGB pixels, with no pixel data at all.

    Decoding it fails (truncated), so a 413 proves the size was read from the header and nothing decoded.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_fabricated_versions_predict_differently(tmp_path):
    from prism.predictor import Predictor

    images = sample_images(tmp_path / "img", n=2)
    a = Predictor.from_bundle(fabricate_bundle(tmp_path / "a", seed=1), device="cpu")
    b = Predictor.from_bundle(fabricate_bundle(tmp_path / "b", seed=2), device="cpu")
    ra, rb = a.predict([str(p) for p in images], tta=False), b.predict([str(p) for p in images], tta=False)
    assert ra[0]["presence"]["probabilities"] != rb[0]["presence"]["probabilities"]


def test_bomb_png_header_is_read_but_not_decodable():
    data = bomb_png(2000, 2000)
    import io

    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (2000, 2000)
        with pytest.raises(OSError):
            img.load()
