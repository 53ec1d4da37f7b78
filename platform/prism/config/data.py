"""The ``data`` section of a job spec: where images and labels come from (an image folder + labels CSV,
WebDataset shards, or a synthetic generator), how they are split, augmented and fed. Torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from prism.config.schema import StrictModel

__all__ = ["AugmentConfig", "CocoDataConfig", "DataConfig", "ImagesConfig", "SyntheticDataConfig", "VideoConfig",
           "VocDataConfig", "WebDatasetConfig"]


class SyntheticDataConfig(StrictModel):
    """Data made by a generator when no dataset is given (demos and tests)."""

    generator: Literal["circles", "sketches", "shapes", "textseg"] | None = Field(
        default=None, description="None = the task's generator (multihead: circles, classify: sketches, "
        "detection: shapes, segment: textseg)."
    )
    n: int = Field(default=600, ge=10)
    size: int = Field(default=128, ge=16)
    seed: int = 0
    cache_dir: Path = Field(default=Path("prism_data"), description="Where generated data is written.")


class AugmentConfig(StrictModel):
    """Training augmentation, applied on CPU in Ray Data ``map_batches``."""

    hflip: bool = True
    vflip: bool = False
    rot90: bool = Field(default=False, description="Random multiples of 90 degrees.")
    crop_scale: tuple[float, float] = Field(default=(0.8, 1.0), description="Random resized crop area range.")
    crop_ratio: tuple[float, float] = Field(
        default=(3 / 4, 4 / 3), description="Random resized crop aspect-ratio range; [1, 1] keeps shapes "
        "undistorted (needed where a label is a shape's proportions, e.g. circular vs elliptical).",
    )
    brightness: float = Field(default=0.1, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ranges_ordered(self) -> AugmentConfig:
        for key, (lo, hi) in (("crop_scale", self.crop_scale), ("crop_ratio", self.crop_ratio)):
            if not 0 < lo <= hi:
                raise ValueError(f"{key} must be [low, high] with 0 < low <= high, got {[lo, hi]}")
        if self.crop_scale[1] > 1:
            raise ValueError(f"crop_scale is a fraction of the image area, at most 1; got {list(self.crop_scale)}")
        return self


class WebDatasetConfig(StrictModel):
    """WebDataset tar shards (``data.source: webdataset``), read by ``ray.data.read_webdataset``.

    A sample is ``<key>.<image ext>`` + its label member (``<key>.cls``: the class index in the task's class
    list, or ``<key>.txt``: the class name), as ``prism data shards`` / ``prism data quickdraw`` write them.
    """

    train: list[str] = Field(
        default_factory=list, description="Training shards: paths, brace patterns (train-{000000..000127}.tar) "
        "or URIs (s3://bucket/train-{000000..000127}.tar); a string is one pattern.",
    )
    val: list[str] | None = Field(
        default=None, description="Validation shards; None = data.val_fraction of the training samples, chosen "
        "by a hash of each sample's shard name and key (the same split on every run and worker).",
    )
    label: Literal["cls", "txt"] = Field(
        default="cls", description="The label member: cls = class index, txt = class name.")
    image: list[str] = Field(
        default_factory=lambda: ["jpg", "jpeg", "png", "webp"], min_length=1,
        description="Image member extensions, the first one a sample has is used.",
    )
    shuffle_shards: bool = Field(default=True, description="Shuffle the training shards' order each epoch.")

    @field_validator("train", "val", mode="before")
    @classmethod
    def _one_pattern(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class CocoDataConfig(StrictModel):
    """COCO detection data (``data.source: coco``): ``instances_*.json`` files and their image folders."""

    train: Path | None = Field(default=None, description="Training annotations (instances_train2017.json); "
                               "None = synthetic shapes.")
    train_images: Path | None = Field(default=None, description="Their image folder; None = the JSON's folder.")
    val: Path | None = Field(default=None, description="Validation annotations; None = data.val_fraction of the "
                             "training images, by data.split_seed.")
    val_images: Path | None = None
    subset: int | None = Field(default=None, ge=1, description="Train on N images only ('mini' COCO), chosen by "
                               "subset_seed; their ids are saved to subset_file.")
    val_subset: int | None = Field(default=None, ge=1, description="Validate on the first N validation images.")
    subset_seed: int = 0
    subset_file: Path | None = Field(default=None, description="Where the subset's image ids are saved; when it "
                                     "exists, those ids are reloaded (exact reproduction).")
    overfit: int | None = Field(default=None, ge=1, description="Debug / overfit mode: train on N training images "
                                "(by subset_seed) and validate on the same N; training sees them as validation does (no "
                                "crop, no flip). A pipeline that works drives their AP towards 1; pair it with more "
                                "epochs and a higher LR (jobs/shapes_overfit.yaml).")


class VocDataConfig(StrictModel):
    """Segmentation masks in the VOC layout (``data.source: voc``): ``root/JPEGImages``,
    ``root/SegmentationClass`` and ``root/ImageSets/Segmentation/<split>.txt``."""

    root: Path | None = Field(default=None, description="The VOC folder; None = synthetic circles and squares.")
    train_split: str | None = Field(default="train", description="ImageSets/Segmentation/<split>.txt of the "
                                    "training ids; None = every image (then data.val_fraction holds some out).")
    val_split: str | None = Field(default="val", description="The validation ids' list; None = data.val_fraction "
                                  "of the training images, by data.split_seed.")
    train_list: Path | None = Field(default=None, description="Another list file of training ids (wins over "
                                    "train_split).")
    val_list: Path | None = Field(default=None, description="Another list file of validation ids.")
    images: Path | None = Field(default=None, description="The image folder; None = root/JPEGImages.")
    masks: Path | None = Field(default=None, description="The mask folder; None = root/SegmentationClass.")
    unlabelled: Path | None = Field(default=None, description="A folder of images without masks (recursive) "
                                    "mixed into training: they add only to the feature distillation "
                                    "(task.loss.distill_weight), their masks all void.")
    prompts: Path | None = Field(default=None, description="A JSON {image id: prompt text}: those images are "
                                 "prompted by their own text (foreground: every class); the others by "
                                 "task.classes.")


class ImagesConfig(StrictModel):
    """An unlabelled image collection (``data.source: images``): the files under ``data.root`` or the ones a
    list file names."""

    list_file: Path | None = Field(
        default=None, description="A text file naming one image per line (relative to data.root, or to the "
        "list's folder when root is unset); None = every image under data.root.",
    )
    recursive: bool = Field(default=True, description="Search data.root's subfolders too.")
    extensions: list[str] = Field(
        default_factory=lambda: ["jpg", "jpeg", "png", "webp", "bmp"], min_length=1,
        description="Image file extensions (case-insensitive).",
    )
    layout: Literal["flat", "subject_clip_frame"] = Field(
        default="flat", description="subject_clip_frame: files are root/<subject>/<clip>/<frame> (a face-video "
        "collection); the counts of subjects and clips are recorded.",
    )


class VideoConfig(StrictModel):
    """Video files (``data.source: video``), decoded frame by frame in order."""

    paths: list[str] = Field(
        default_factory=list, description="Video files or glob patterns; relative ones are under data.root. "
        "Empty = every video under data.root.",
    )
    extensions: list[str] = Field(default_factory=lambda: ["mp4", "avi", "mov", "mkv", "webm"], min_length=1)
    frame_stride: int = Field(default=1, ge=1, description="Keep every n-th frame.")
    fps: int | None = Field(
        default=None, gt=0, description="Keep about this many frames a second instead (every round(source fps "
        "/ fps)-th frame); None = frame_stride.")


class DataConfig(StrictModel):
    """Where images and labels come from and how they are split and fed."""

    source: Literal["csv", "webdataset", "images", "video", "coco", "voc"] | None = Field(
        default=None, description="csv: an image folder + labels CSV (data.root / data.labels); webdataset: "
        "tar shards (data.webdataset); images: an unlabelled image collection (data.images); video: video "
        "files (data.video); coco: COCO detection JSON (data.coco); voc: segmentation masks in the VOC layout "
        "(data.voc). None = the first the task reads (csv for the classifiers, images for features).",
    )
    webdataset: WebDatasetConfig = Field(default_factory=WebDatasetConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    coco: CocoDataConfig = Field(default_factory=CocoDataConfig)
    voc: VocDataConfig = Field(default_factory=VocDataConfig)
    video: VideoConfig = Field(default_factory=VideoConfig)

    root: Path | None = Field(
        default=None,
        description="Image folder: relative image paths in the labels CSV are resolved against it (absolute "
        "ones are used as they are); None = against the CSV's folder. root and labels both None = synthetic data.",
    )
    labels: Path | None = Field(
        default=None,
        description="Labels CSV, may live outside root; default <root>/labels.csv. Its relative image paths "
        "are under root when root is set, else under the CSV's own folder.",
    )
    image_column: str = "image"
    synthetic: SyntheticDataConfig = Field(default_factory=SyntheticDataConfig)
    val_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    split_seed: int = 0
    on_bad_rows: Literal["error", "skip"] = Field(
        default="error", description="error: stop naming the file/row; skip: drop, count and log."
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    batch_size: int = Field(default=32, ge=1, description="Per-worker batch size.")
    shuffle_buffer: int = Field(default=256, ge=0, description="Local shuffle buffer in rows; 0 = off.")
    map_batch_size: int = Field(default=64, ge=1, description="Rows per Ray Data decode task batch.")
    deterministic: bool = Field(
        default=True, description="Ray Data keeps the block order (preserve_order), so with train.seed an "
        "epoch sees the same rows in the same order each run; false trades that for a little throughput.",
    )
    progress_bars: bool = Field(default=False, description="Ray Data's per-operator progress bars.")
    check_images: bool = Field(
        default=True, description="Decode every image once before training so bad files fail early (not "
        "for synthetic data, which the generator has just written)."
    )

    def labels_path(self) -> Path | None:
        if self.labels is not None:
            return self.labels
        return None if self.root is None else self.root / "labels.csv"
