"""Config of the text-prompted segmentation task (torch-free): SAM's decoder type and checkpoint, the
decoder grid, the CLIP text tower that encodes prompts, the class prompts, the loss weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from prism.config.schema import StrictModel
from prism.tasks.config import TaskConfig

__all__ = ["DualCircleEpochConfig", "PromptJitterConfig", "SegmentLossConfig", "SegmentTaskConfig", "TextTowerConfig"]


class TextTowerConfig(StrictModel):
    """The frozen CLIP text tower whose embedding of the prompt conditions the decoder."""

    name: str = Field(default="clip_vitb16", description="A registered CLIP backbone (prism backbones); its text "
                      "tower is used, never trained.")
    pretrained: bool = Field(default=True, description="open_clip's published weights (needs the hub once).")
    weights: Path | None = Field(default=None, description="A local CLIP checkpoint instead (offline).")
    seed: int = Field(default=0, description="Random init seed when neither pretrained nor weights (tests).")


class SegmentLossConfig(StrictModel):
    """Dice + binary cross-entropy on the prompted object's mask (void pixels ignored)."""

    dice_weight: float = Field(default=1.0, ge=0)
    bce_weight: float = Field(default=1.0, ge=0)
    iou_weight: float = Field(default=1.0, ge=0, description="SAM's IoU head: mean squared error of its "
                              "predicted IoU against the IoU the mask has (what predictions report as score).")
    align_weight: float = Field(
        default=0.0, ge=0, description="CLIP alignment: the mask-pooled region embedding contrasted with the "
        "row's prompt against the batch's other prompts and every class prompt (prism.tasks.segment.align); "
        "0 = off (no alignment projection is built).")
    align_temperature: float = Field(default=0.07, gt=0, description="InfoNCE temperature of the alignment.")
    distill_weight: float = Field(
        default=0.0, ge=0, description="Feature distillation: 1 - cosine between the adapted backbone's patch "
        "tokens and those of a frozen copy of the backbone as its weights give it, on every training image "
        "(data.voc.unlabelled images too); keeps adapted DINO features near the frozen ones. 0 = off (no "
        "frozen copy is built).")


class PromptJitterConfig(StrictModel):
    """Random point / box prompts drawn from the training masks beside the text (robustness to them; SAM's
    training does the same). Validation stays text only."""

    points: int = Field(default=0, ge=0, description="Up to this many positive points inside the object, per "
                        "prompted row; 0 = no point prompts.")
    point_prob: float = Field(default=0.5, ge=0, le=1, description="Chance that a row gets points.")
    box_prob: float = Field(default=0.0, ge=0, le=1, description="Chance that a row gets its mask's box; 0 = no "
                            "box prompts.")
    box_jitter: float = Field(default=0.1, ge=0, lt=1, description="Each box edge moved by up to this fraction "
                              "of the box's side.")

    @property
    def slots(self) -> int:
        """Prompt slots per row: the points, and a box's two corners."""
        return self.points + (2 if self.box_prob > 0 else 0)


class DualCircleEpochConfig(StrictModel):
    """Dual-circle evaluation after every ``every`` epochs of training (prism.tasks.segment.dual_circle):
    ``val/dual_circle/<metric>`` in the epoch's metrics, ``dual_circle/per_image.csv`` and renders in its
    checkpoint folder."""

    circles: Path = Field(description="The annotations JSON {stem: {circles: [[cx, cy, r_inner, r_outer]], "
                          "ignore: [[x0, y0, x1, y1]]}}.")
    images: Path = Field(description="The images (<stem>-noCircles.* or <stem>.*), predicted with the prompt.")
    prompt: str = Field(min_length=1, description="What to segment in them.")
    every: int = Field(default=1, ge=1, description="Every N epochs (and the last).")
    visualise: int = Field(default=4, ge=0, description="Images rendered into the checkpoint each time.")


class SegmentTaskConfig(TaskConfig):
    """The mask of the object a text prompt names, from SAM's decoder on the backbone's patches."""

    name: Literal["segment"] = "segment"
    default_metric: ClassVar[str] = "val/iou"
    default_mode: ClassVar[Literal["max", "min"]] = "max"
    summary_metrics: ClassVar[tuple[str, ...]] = ("val/iou", "val/dice")
    data_sources: ClassVar[tuple[str, ...]] = ("voc",)
    synthetic_generator: ClassVar[str] = "textseg"

    sam_type: Literal["vit_b", "vit_l", "vit_h", "tiny"] = Field(
        default="vit_b", description="SAM's prompt encoder / mask decoder (vit_b, vit_l, vit_h share one: 256 "
        "channels); tiny: 32 channels, for tests.")
    sam_checkpoint: Path | None = Field(
        default=None, description="An official SAM checkpoint (sam_vit_b_01ec64.pth …): its prompt_encoder.* and "
        "mask_decoder.* initialise the decoder (strictly); None = random init.")
    decoder_grid: int = Field(default=64, ge=2, description="The image embedding's side in cells (SAM: 64); "
                              "masks come out at 4x it.")
    text: TextTowerConfig = Field(default_factory=TextTowerConfig)
    text_tokens: int = Field(default=2, ge=1, description="Sparse prompt tokens the text embedding becomes.")
    classes: dict[int, str] | None = Field(
        default=None, description="Class index in the masks → its prompt text; None = the data's classes.json "
        "(the synthetic set's: 1 circle, 2 square).")
    threshold: float = Field(default=0.5, gt=0, lt=1, description="Mask probability threshold (metrics, default "
                             "of the request option).")
    loss: SegmentLossConfig = Field(default_factory=SegmentLossConfig)
    jitter: PromptJitterConfig = Field(default_factory=PromptJitterConfig)
    dual_circle: DualCircleEpochConfig | None = Field(default=None, description="Dual-circle evaluation during "
                                                      "training; None = off.")

    def complete(self, data: Any) -> None:
        """``classes`` from ``<data.voc.root>/classes.json`` (or the synthetic set's) when unset."""
        if self.classes is not None:
            return
        if data.voc.root is None:
            from prism.data.synth.textseg import TEXTSEG_CLASSES

            self.classes = dict(TEXTSEG_CLASSES)
            return
        path = Path(data.voc.root) / "classes.json"
        try:
            self.classes = {int(k): str(v) for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError, AttributeError) as e:
            raise ValueError(f"task.classes is unset and {path} cannot be read ({e}); give task.classes "
                             "{index: prompt text}") from None
