"""Config of the multi-head classification task: heads, their classes and conditions.

A head is a classifier over its own class list. A *conditional* head (``only_when``) is defined only where
another head's label is in a given set — e.g. ``closure`` only when ``presence`` is a circle. Where the
condition fails the head's loss is masked and its output is ``na``; ``na`` is never a class.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from prism.config.schema import StrictModel
from prism.tasks.config import TaskConfig

__all__ = ["HeadConfig", "MultiHeadTaskConfig", "NA", "TTA_OPS"]

NA = "na"
TTA_OPS = ("hflip", "vflip", "rot90", "rot270")


class HeadConfig(StrictModel):
    """One classification head."""

    name: str = Field(description="Head name; also the labels CSV column that holds its labels.")
    classes: list[str] = Field(min_length=2, description="Class names, in output order.")
    only_when: dict[str, list[str]] | None = Field(
        default=None,
        description="Condition {other_head: [classes]}: this head is defined only where it holds.",
    )
    class_weights: list[float] | None = Field(
        default=None, description="Per-class loss weights, same order as `classes`."
    )

    @field_validator("classes")
    @classmethod
    def _classes_valid(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"classes must be unique, got {v}")
        if NA in v or "" in v:
            raise ValueError(f"'{NA}' and '' mean 'not defined' and cannot be classes; got {v}")
        return v

    @model_validator(mode="after")
    def _weights_match(self) -> HeadConfig:
        if self.class_weights is not None:
            if len(self.class_weights) != len(self.classes):
                raise ValueError(
                    f"class_weights has {len(self.class_weights)} values but head '{self.name}' has "
                    f"{len(self.classes)} classes {self.classes}"
                )
            if any(w <= 0 for w in self.class_weights):
                raise ValueError(f"class_weights must be positive, got {self.class_weights}")
        return self


class MultiHeadTaskConfig(TaskConfig):
    """Multi-head classification: any number of heads, some conditional on others."""

    default_metric: ClassVar[str] = "val/macro_f1"
    default_mode: ClassVar[Literal["max", "min"]] = "max"
    summary_metrics: ClassVar[tuple[str, ...]] = ("val/accuracy", "val/macro_f1")

    name: Literal["multihead"] = "multihead"
    heads: list[HeadConfig] = Field(min_length=1)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    hidden_dim: int | None = Field(default=None, ge=1, description="MLP hidden width; None = linear heads.")
    pooling: Literal["cls", "cls+mean"] = Field(
        default="cls+mean", description="Head input: cls token, or cls concatenated with mean patch token."
    )
    tta: list[Literal["hflip", "vflip", "rot90", "rot270"]] = Field(
        default_factory=lambda: ["hflip"],
        description="Test-time augmentations averaged with the identity view in evaluate/predict.",
    )

    @model_validator(mode="after")
    def _conditions_valid(self) -> MultiHeadTaskConfig:
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names):
            raise ValueError(f"head names must be unique, got {names}")
        by_name = {h.name: h for h in self.heads}
        for h in self.heads:
            for other, allowed in (h.only_when or {}).items():
                if other not in by_name:
                    raise ValueError(f"head '{h.name}': only_when names unknown head '{other}' (heads: {names})")
                if other == h.name:
                    raise ValueError(f"head '{h.name}': only_when cannot refer to itself")
                bad = [c for c in allowed if c not in by_name[other].classes]
                if bad:
                    raise ValueError(
                        f"head '{h.name}': only_when.{other} has {bad}, not classes of '{other}' "
                        f"{by_name[other].classes}"
                    )
        return self

    def label_maps(self) -> dict[str, list[str]]:
        """``{head: [class, …]}`` in output order."""
        return {h.name: list(h.classes) for h in self.heads}
