"""Per-epoch checkpoints: a model bundle plus optimizer and :class:`TrainState`, written by rank 0."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from prism.engine.state import TrainState
from prism.inference.bundle import WEIGHTS_FILE, write_bundle

if TYPE_CHECKING:
    from torch import nn

    from prism.config import JobConfig
    from prism.tasks.base import Task

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: Path, *, cfg: JobConfig, task: Task, model: nn.Module, names: list[str],
                    optimizer: torch.optim.Optimizer, state: TrainState, metrics: dict[str, float],
                    extra: dict | None = None) -> Path:
    """Write a loadable bundle (:func:`prism.inference.bundle.write_bundle`, its ``metrics.json`` =
    ``{"metrics": metrics, **extra}``) + ``optimizer.pt`` + ``state.json`` into ``path``."""
    path = Path(path)
    write_bundle(path, cfg, task, model, names, metrics={"metrics": metrics, **(extra or {})},
                 metadata={"epoch": str(state.epoch)})
    torch.save(optimizer.state_dict(), path / "optimizer.pt")
    state.save(path / "state.json")
    return path


def load_checkpoint(path: Path, model: nn.Module) -> tuple[TrainState, dict | None]:
    """Load adapted weights into ``model``; return the saved state and optimizer state dict (or None)."""
    from prism.adapters import load_adapted

    path = Path(path)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{path} is not a Prism checkpoint (no state.json); give a checkpoint_* dir")
    load_adapted(path / WEIGHTS_FILE, model, strict=True)
    opt = path / "optimizer.pt"
    opt_state = torch.load(opt, map_location="cpu", weights_only=True) if opt.is_file() else None
    return TrainState.load(path / "state.json"), opt_state
