"""Per-request options every task accepts (torch-free: Serve documents them where the app is built)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PredictOptions"]


class PredictOptions(BaseModel):
    """Request options of every task; a task's ``options_class`` extends it. ``None`` = the default."""

    model_config = ConfigDict(extra="forbid")

    tta: bool | None = Field(None, description="test-time augmentation (default: the deployment's setting)")
