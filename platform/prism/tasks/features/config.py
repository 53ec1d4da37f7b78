"""Config of the patch-feature task: PCA of a backbone's patch tokens over a collection, no training.

A job of this task (``prism features pca JOB``) reads images or videos (``data.source: images | video``),
runs the backbone in a pool of Ray Data actors, reduces every patch token to streaming statistics and
solves the PCA; the result is a model bundle (the basis is its ``pca.safetensors`` artifact) that
``prism features render``, ``prism predict`` and Serve use like any other registered model.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from prism.config.schema import StrictModel
from prism.tasks.config import TaskConfig

__all__ = ["ExtractConfig", "FeaturesTaskConfig", "ForegroundConfig", "RenderConfig"]


class ForegroundConfig(StrictModel):
    """A second PCA on foreground patches only, as DINOv2's authors separate objects from background: a
    patch is foreground where its first component (standardised) is above ``threshold`` (below it when
    ``invert``, for collections where the background takes the positive side)."""

    threshold: float = Field(default=0.0, description="Threshold on the standardised first component.")
    invert: bool = Field(default=False, description="Foreground is below the threshold instead of above.")


class ExtractConfig(StrictModel):
    """How the collection is run through the backbone."""

    actors: int = Field(default=1, ge=1, description="Backbone actors (Ray Data map_batches with a class).")
    batch_size: int | None = Field(
        default=None, ge=1, description="Images per forward pass; None = start at 64 and halve on out-of-memory "
        "until a batch fits (then keep that size)."
    )
    num_gpus: float | None = Field(
        default=None, ge=0, description="GPUs per actor; None = 1 when CUDA is available here, else 0."
    )
    threads: int | None = Field(
        default=None, ge=1, description="CPU actors: torch threads of each (None = the node's CPUs / actors). Each "
        "actor reserves 1 CPU from Ray either way (more would leave Ray Data no CPU to schedule with)."
    )
    max_samples: int | None = Field(
        default=None, ge=1, description="Stop after this many patches (an explicit cap; None = every patch)."
    )
    chunk_images: int = Field(
        default=2048, ge=1, description="Images per chunk: each chunk's statistics are saved as it ends, so a "
        "killed job resumes after its last finished chunk."
    )


class RenderConfig(StrictModel):
    """How components become colours (``prism features render``, ``prism predict``, Serve's defaults)."""

    start: int = Field(default=0, ge=0, description="First component shown.")
    n: Literal[1, 2, 3] = Field(default=3, description="Components shown: 1 = grey, 2 = red/green, 3 = RGB.")
    sigmas: float = Field(
        default=2.5, gt=0, description="Colour scale: ±sigmas standard deviations of each component (from the "
        "collection's eigenvalues) span the colour range, the same in every image and frame."
    )
    upsample: Literal["patch", "smooth"] = Field(
        default="smooth", description="patch = one flat cell per patch; smooth = bilinear to the image size."
    )


class FeaturesTaskConfig(TaskConfig):
    """PCA of patch features: how many components to keep, the optional foreground PCA, extraction and
    rendering settings."""

    name: Literal["features"] = "features"
    trains: ClassVar[bool] = False
    default_metric: ClassVar[str] = "val/component_variance"
    default_mode: ClassVar[Literal["max", "min"]] = "max"
    data_sources: ClassVar[tuple[str, ...]] = ("images", "video")
    synthetic_generator: ClassVar[str] = "circles"

    components: int = Field(default=16, ge=1, description="Principal components kept in the artifact.")
    foreground: ForegroundConfig | None = Field(
        default=None, description="Also fit a PCA on foreground patches (a second pass over the collection)."
    )
    lora_from: str | None = Field(
        default=None, description="A registered model (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/… or a "
        "bundle folder) whose adapted backbone (LoRA, and blocks an unfreeze stage trained) is used: its base "
        "weights and LoRA settings are taken, at this job's img_size; backbone.name must be the model's."
    )
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    render: RenderConfig = Field(default_factory=RenderConfig)
    output: Path = Field(
        default=Path("prism_features"), description="Folder of the run's partial statistics and its bundle."
    )
