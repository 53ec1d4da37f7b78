"""Config of the detection task (torch-free): the decoder preset and its overrides, the loss weights, the
canvas. The classes come from the COCO file's categories (ids kept; the model's index is their order)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from prism.config.schema import StrictModel
from prism.tasks.config import TaskConfig

__all__ = ["PRESETS", "DecoderConfig", "DetectionLossConfig", "DetectionTaskConfig"]

PRESETS: dict[str, dict[str, Any]] = {
    "standard": {"layers": 6, "queries": 100, "dim": 256, "heads": 8, "points": 4, "ffn": 1024,
                 "scales": [2.0, 1.0, 0.5, 0.25]},
    "lightweight": {"layers": 2, "queries": 25, "dim": 128, "heads": 4, "points": 2, "ffn": 512,
                    "scales": [2.0, 1.0, 0.5]},
}
"""Decoder sizes: ``standard`` is Deformable DETR's; ``lightweight`` fits a CPU demo."""


class DecoderConfig(StrictModel):
    """The decoder: a preset, and any of its values overridden (None = the preset's)."""

    preset: Literal["standard", "lightweight"] = "standard"
    layers: int | None = Field(default=None, ge=1)
    queries: int | None = Field(default=None, ge=1)
    dim: int | None = Field(default=None, ge=8)
    heads: int | None = Field(default=None, ge=1)
    points: int | None = Field(default=None, ge=1)
    ffn: int | None = Field(default=None, ge=8)
    scales: list[Literal[4.0, 2.0, 1.0, 0.5, 0.25]] | None = Field(
        default=None, min_length=1, description="Pyramid levels as multiples of the patch grid, finest first.")
    refine: bool = Field(default=True, description="Iterative box refinement across decoder layers.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)

    def resolved(self) -> dict[str, Any]:
        """The preset with the overrides applied."""
        values = dict(PRESETS[self.preset])
        values.update({k: v for k, v in self.model_dump().items() if v is not None and k in values})
        values.update(refine=self.refine, dropout=self.dropout)
        return values

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> DecoderConfig:
        v = self.resolved()
        if v["dim"] % v["heads"]:
            raise ValueError(f"decoder dim {v['dim']} must be divisible by its {v['heads']} heads")
        return self


class DetectionLossConfig(StrictModel):
    """Weights of the matching costs and of the loss terms (Deformable DETR's defaults)."""

    class_weight: float = Field(default=2.0, ge=0)
    bbox_weight: float = Field(default=5.0, ge=0)
    giou_weight: float = Field(default=2.0, ge=0)
    focal_alpha: float = Field(default=0.25, gt=0, lt=1)
    focal_gamma: float = Field(default=2.0, ge=0)
    aux: bool = Field(default=True, description="Losses on every decoder layer, not only the last.")


class DetectionTaskConfig(TaskConfig):
    """Boxes of the dataset's categories (``categories`` are read from the COCO file when unset)."""

    name: Literal["detection"] = "detection"
    default_metric: ClassVar[str] = "val/AP"
    default_mode: ClassVar[Literal["max", "min"]] = "max"
    summary_metrics: ClassVar[tuple[str, ...]] = ("val/AP", "val/AP50", "val/AP75")
    data_sources: ClassVar[tuple[str, ...]] = ("coco",)
    synthetic_generator: ClassVar[str] = "shapes"

    categories: list[dict[str, Any]] | Literal["coco2017"] | None = Field(
        default=None, description="[{id, name}] in model order; coco2017 = COCO 2017's 80 (ids 1..90); None = the "
        "training COCO file's, by id.")
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    loss: DetectionLossConfig = Field(default_factory=DetectionLossConfig)
    max_detections: int = Field(default=100, ge=1, description="Detections per image (the top (query, class) pairs).")

    def complete(self, data: Any) -> None:
        """``categories`` from the training COCO file (or the synthetic shapes' own) when unset; ``coco2017``
        as its list."""
        if self.categories == "coco2017":
            from prism.data.coco_categories import COCO2017_CATEGORIES

            self.categories = [dict(c) for c in COCO2017_CATEGORIES]
            return
        if self.categories is not None:
            return
        if data.coco.train is None:
            from prism.data.synth.shapes import SHAPE_CATEGORIES

            self.categories = [dict(c) for c in SHAPE_CATEGORIES]
            return
        import json

        path = data.coco.train
        try:
            cats = json.loads(path.read_text())["categories"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"task.categories: cannot read the categories of data.coco.train ({path}): {e}") from None
        self.categories = sorted(({"id": int(c["id"]), "name": str(c.get("name", c["id"]))} for c in cats),
                                 key=lambda c: c["id"])
    score_threshold: float = Field(default=0.0, ge=0, le=1, description="Default of the request option.")
