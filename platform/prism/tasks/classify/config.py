"""Config of the single-label classification task: K classes (tens to thousands), a linear or MLP head.

The classes come from ``classes`` (a list) or ``classes_file`` (one name per line, in output order, as
QuickDraw-style class lists are kept). The file is read when the config is validated, and the resolved
config carries the list, so a registered model needs no file to load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from prism.config.schema import StrictModel
from prism.tasks.config import TaskConfig

__all__ = ["DEFAULT_TEMPLATES", "ClassifyHeadConfig", "ClassifyTaskConfig", "read_class_list"]

DEFAULT_TEMPLATES = ("a photo of a {}.", "a drawing of a {}.", "a sketch of a {}.", "a picture of the {}.")
"""Prompt templates of zero-shot by class names ("{}" = the name); open_clip's lists are longer."""


def read_class_list(path: Path) -> list[str]:
    """Class names of a class-list file: one per line, blank lines and ``#`` comments skipped."""
    if not Path(path).is_file():
        raise ValueError(f"class-list file not found: {path}")
    names = [line.strip() for line in Path(path).read_text().splitlines()]
    return [n for n in names if n and not n.startswith("#")]


class ClassifyHeadConfig(StrictModel):
    """The classifier on pooled backbone features: LayerNorm → [Linear → GELU → Dropout] per hidden size
    → Linear(K)."""

    hidden: list[int] = Field(
        default_factory=list, description="MLP hidden sizes, e.g. [1024, 768, 384]; [] = a linear head."
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout after each hidden layer.")
    pooling: Literal["cls", "cls+mean", "mean"] = Field(
        default="cls", description="Head input: the cls token, cls concatenated with the mean patch token, or "
        "the mean patch token."
    )

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(h < 1 for h in v):
            raise ValueError(f"hidden sizes must be >= 1, got {v}")
        return v


class ClassifyTaskConfig(TaskConfig):
    """Single-label classification over ``classes``."""

    default_metric: ClassVar[str] = "val/top1"
    default_mode: ClassVar[Literal["max", "min"]] = "max"
    summary_metrics: ClassVar[tuple[str, ...]] = ("val/top1", "val/top5", "val/macro_f1")
    synthetic_generator: ClassVar[str] = "sketches"
    data_sources: ClassVar[tuple[str, ...]] = ("csv", "webdataset")

    name: Literal["classify"] = "classify"
    classes: list[str] | None = Field(default=None, description="Class names in output order.")
    classes_file: Path | None = Field(
        default=None, description="A class-list file (one name per line) instead of classes."
    )
    label_column: str = Field(default="label", description="The labels-table column holding each image's class.")
    head: ClassifyHeadConfig = Field(default_factory=ClassifyHeadConfig)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    class_weights: dict[str, float] | None = Field(
        default=None, description="Loss weight per class name; classes not named weigh 1."
    )
    top_k: int = Field(default=5, ge=1, description="Classes a prediction lists (capped at K).")
    tta: list[Literal["hflip", "vflip", "rot90", "rot270"]] = Field(
        default_factory=list, description="Test-time augmentations averaged with the identity view."
    )
    zero_shot_templates: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TEMPLATES), min_length=1,
        description="Prompt templates of zero-shot by class names (CLIP backbones); '{}' is the name."
    )

    @field_validator("zero_shot_templates")
    @classmethod
    def _templates(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if "{}" not in t]
        if bad:
            raise ValueError(f"zero_shot_templates must each hold '{{}}' where the class name goes: {bad}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _read_classes_file(cls, raw: Any) -> Any:
        """``classes_file`` → ``classes`` (a resolved config has both; its file may be gone, then the list
        stands)."""
        if not isinstance(raw, dict) or raw.get("classes_file") is None:
            return raw
        path, given = Path(raw["classes_file"]), raw.get("classes")
        if given is not None and not path.is_file():
            return raw
        listed = read_class_list(path)
        if given is not None and list(given) != listed:
            raise ValueError(f"classes and classes_file ({path}) disagree; give one of them")
        return {**raw, "classes": listed}

    @model_validator(mode="after")
    def _check_classes(self) -> ClassifyTaskConfig:
        if self.classes is None:
            raise ValueError("give classes (a list) or classes_file (one class name per line)")
        if len(self.classes) < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {self.classes}")
        dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if dup or "" in self.classes:
            raise ValueError(f"class names must be unique and non-empty; repeated: {dup}")
        unknown = sorted(set(self.class_weights or {}) - set(self.classes))
        if unknown:
            raise ValueError(f"class_weights names unknown classes {unknown[:10]}")
        bad = {k: w for k, w in (self.class_weights or {}).items() if not w > 0}
        if bad:
            raise ValueError(f"class_weights must be positive, got {bad}")
        return self

    def synthetic_options(self) -> dict[str, Any]:
        return {"classes": list(self.classes)}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def weight_vector(self) -> list[float] | None:
        """Per-class loss weights in class order; None when every class weighs 1."""
        if not self.class_weights:
            return None
        return [float(self.class_weights.get(c, 1.0)) for c in self.classes]
