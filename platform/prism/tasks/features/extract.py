"""The extraction actor: images → backbone patch tokens → one block of PCA statistics per batch.

A pool of these runs as Ray Data ``map_batches`` with a callable class (the model is built once per
actor)::

    {"image": uint8 (B, S, S, 3), "path", "subject", "clip", "frame"}
      └─ backbone (sub-batches that fit memory)  → patches (B, h, w, C)
      └─ the foreground mask of a fitted basis, in the second pass (optional)
      └─ PatchStats of the B·h·w rows (float64)  → a row {"chunk", "count", "mean": (C,), "m2": (C, C),
                                                          "images", "batch"} per chunk in the batch

The sub-batch starts at ``task.extract.batch_size`` (default 64) and halves on an out-of-memory error
until a batch fits; it then stays at that size for the rest of the actor's work.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from prism.tasks.features.source import load_backbone_tensors, tensors_from_bytes
from prism.tasks.features.stats import PatchStats

__all__ = ["DEFAULT_BATCH", "PatchStatsMapper", "patch_features"]

DEFAULT_BATCH = 64


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def patch_features(backbone: torch.nn.Module, images: np.ndarray, device: torch.device,
                   amp: torch.dtype | None = None) -> torch.Tensor:
    """uint8 images (B, S, S, 3) → patch tokens (B, h, w, C) on ``device`` (float32)."""
    from prism.engine.inputs import to_model_input
    from prism.engine.precision import autocast

    x = to_model_input(torch.from_numpy(np.ascontiguousarray(images)), backbone.mean, backbone.std, device)
    with torch.inference_mode(), autocast(device, amp):
        return backbone(x)["patches"].float()


class PatchStatsMapper:
    """``map_batches`` callable class: one block of statistics per batch of images (see the module).

    ``job``: the resolved job config (a dict); ``basis``: the main basis's artifact files for the
    foreground pass (``{pca.safetensors: bytes, …}``), None for the main pass; ``threads``: torch's CPU
    threads on a CPU (``task.extract.threads``; None leaves the process's setting); ``backbone_tensors``: the
    adapted tensors of ``task.lora_from`` (:mod:`prism.tasks.features.source`), merged into the weights."""

    def __init__(self, job: dict[str, Any], basis: dict[str, bytes] | None = None, device: str | None = None,
                 threads: int | None = None, backbone_tensors: bytes | None = None):
        from prism.config import JobConfig
        from prism.engine.model import build_model
        from prism.engine.precision import resolve_amp
        from prism.tasks import build_task

        cfg = JobConfig.model_validate(job)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if threads is not None and self.device.type == "cpu":  # Ray starts an actor with 1 thread
            torch.set_num_threads(max(1, int(threads)))
        task = build_task(cfg)
        model = build_model(cfg, task).eval()
        tensors = tensors_from_bytes(backbone_tensors)
        if tensors:
            from prism.adapters import merge_lora

            load_backbone_tensors(model, tensors)
            merge_lora(model)
        self.backbone = model.backbone.to(self.device)
        self.head = None
        if basis is not None:
            from prism.tasks.features.artifact import pca_from_bytes

            main, _, _ = pca_from_bytes(basis)
            f = cfg.task.foreground
            model.heads.set_basis(main, main if model.heads.has_foreground else None, f.threshold, f.invert)
            self.head = model.heads.to(self.device)
        self.amp = resolve_amp(cfg.train.amp, self.device)
        self.batch = cfg.task.extract.batch_size or DEFAULT_BATCH

    def features(self, images: np.ndarray) -> torch.Tensor:
        """(B, S, S, 3) → (B, h, w, C), in sub-batches of :attr:`batch` (halved on out-of-memory)."""
        while True:
            try:
                parts = [patch_features(self.backbone, images[i:i + self.batch], self.device, self.amp)
                         for i in range(0, len(images), self.batch)]
                return torch.cat(parts)
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if not _is_oom(e) or self.batch == 1:
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.batch = max(1, self.batch // 2)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One output row per chunk the batch's images belong to (its ``chunk`` column)."""
        patches = self.features(batch["image"])  # (B, h, w, C)
        if "chunk" not in batch:
            raise ValueError("PatchStatsMapper needs a 'chunk' column (the chunk each image belongs to)")
        chunks = np.asarray(batch["chunk"])
        out: dict[str, list] = {k: [] for k in ("chunk", "count", "mean", "m2", "images", "batch")}
        for c in np.unique(chunks):
            sel = torch.from_numpy(np.flatnonzero(chunks == c)).to(patches.device)
            rows = patches.index_select(0, sel).reshape(-1, patches.shape[-1])
            if self.head is not None:
                rows = rows[self.head.foreground_mask(self.head.standardised(rows))]
            stats = PatchStats.of(rows)
            for k, v in (("chunk", int(c)), ("count", stats.n), ("mean", stats.mean.numpy()),
                         ("m2", stats.m2.numpy()), ("images", len(sel)), ("batch", self.batch)):
                out[k].append(v)
        return {k: np.stack(v) if k in ("mean", "m2") else np.asarray(v, dtype=np.int64) for k, v in out.items()}
