"""The task contract: everything the one train loop, the predictor, the bundle and Serve need from a task.

A task builds only its heads on a backbone the engine built (:func:`prism.engine.model.build_model` adds
the backbone, its LoRA sites and the heads' LoRA sites). Shapes, with B images per batch::

    Ray Data batch (numpy)      {"image": uint8 (B, S, S, 3), <target columns>}
      └─ collate_fn()(batch)    → (inputs, targets) on CPU
           inputs               {"image": uint8 (B, S, S, 3) tensor, …}   e.g. "tokens": int64 (B, L)
           targets              {name: tensor (B, …)}  or a list of B dicts (ragged: boxes, masks)
      └─ engine                 moves both to the device; inputs["image"] → float (B, 3, S, S), normalised
    model(inputs)               → outputs {name: tensor}; model.heads(features, inputs) gives them
    loss(outputs, targets)      → (scalar loss, {part: float})
    predictions(model, inputs, tta) → {name: tensor (B, …)} or lists of B items; what validation,
                                  ``prism evaluate``, ``prism predict`` and Serve all score and return
    metrics()                   → accumulator: update(predictions, targets), state()/merge() across workers
    preprocess(image, options)  → (inputs for ONE image, without batch dim, meta)
    postprocess(prediction, meta, options) → one JSON-able result (values may be :class:`BinaryOutput`)

Ray concatenates a collate function's *list of tensors* into one tensor silently, so ragged targets are a
list of dicts of tensors, which Ray passes through as they are. The engine applies mixed precision around
``model(inputs)`` and ``predictions``: a task never imports from :mod:`prism.engine`'s loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from prism.tasks.options import PredictOptions
from prism.tasks.outputs import BinaryOutput

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image
    from ray.data.collate_fn import CollateFn

    from prism.backbones import Backbone
    from prism.config import JobConfig

__all__ = ["BinaryOutput", "HeadSite", "MetricAccumulator", "PredictOptions", "Task"]


@dataclass(frozen=True)
class HeadSite:
    """A LoRA site a task offers inside its heads: the submodule (path under ``model.heads``) and the
    default module-name suffixes adapted there (e.g. ``("q_proj", "k_proj", "v_proj", "out_proj")``)."""

    module: str
    targets: tuple[str, ...]


class MetricAccumulator(ABC):
    """Statistics of one evaluation pass on one worker, merged across workers by the engine.

    ``state()`` returns the statistics as a dict. When ``summable`` (the fast path), every value is a
    tensor and merging is elementwise addition: the engine all-reduces them in one collective. Otherwise
    (e.g. COCO detections) the engine gathers every worker's state and ``merge``s them into one.
    """

    summable: ClassVar[bool] = True

    @abstractmethod
    def update(self, predictions: dict[str, Any], targets: Any) -> None:
        """Add one batch: :meth:`Task.predictions` output and the targets from the collate function."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """The statistics so far (tensors when ``summable``; anything picklable otherwise)."""

    @abstractmethod
    def merge(self, state: dict[str, Any]) -> None:
        """Add the statistics of another accumulator (its :meth:`state`) into this one."""

    @abstractmethod
    def compute(self, prefix: str = "val/") -> dict[str, float]:
        """Scalar metrics, flat keys such as ``val/presence/accuracy``."""

    def export(self) -> dict[str, Any]:
        """JSON-able raw statistics (e.g. confusion matrices) saved with the checkpoint; see Task.figures."""
        return {}


class Task(ABC):
    """One task: its heads, data, loss, metrics, predictions and the pre/postprocessing around them."""

    name: ClassVar[str]
    options_class: ClassVar[type[PredictOptions]] = PredictOptions
    """Per-request options (a pydantic model); Serve documents them in its OpenAPI spec."""
    backbone_layers: tuple[int, ...] = ()
    """Intermediate backbone blocks the heads read (``features["layers"]``); () = final tokens only."""
    ddp_unused_parameters: ClassVar[bool] = False
    """True when a batch may leave trainable head parameters out of the loss (e.g. embeddings of prompt
    kinds it lacks): DDP then looks for them each step (``find_unused_parameters``) instead of stalling."""

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg

    @property
    def img_size(self) -> int:
        """The side images are resized to (``backbone.img_size``, default 224)."""
        return int(self.cfg.backbone.img_size or 224)

    # -- examples (the contract test, demos) ----------------------------------------------------------
    @classmethod
    @abstractmethod
    def example_job(cls) -> dict[str, Any]:
        """A small raw job spec of this task on a tiny backbone: what the contract test runs every task on."""

    @abstractmethod
    def example_batch(self, n: int, seed: int = 0) -> dict[str, np.ndarray]:
        """``n`` synthetic rows as a Ray Data batch of this task (what its datasets feed the collate class)."""

    def example_options(self) -> dict[str, Any]:
        """Request options a request of the example job needs (e.g. a segmenter's ``prompt``); {} by default."""
        return {}

    # -- model ------------------------------------------------------------------------------------
    @abstractmethod
    def build_heads(self, backbone: Backbone) -> nn.Module:
        """The heads on ``backbone``: a module whose ``forward(features, inputs)`` returns the outputs.

        ``features`` is the backbone's output for ``inputs["image"]`` (``{"cls": (B, C), "patches":
        (B, h, w, C)}``, + ``"layers"`` for :attr:`backbone_layers`, + ``"embedding"`` for CLIP)."""

    def lora_sites(self) -> dict[str, HeadSite]:
        """LoRA sites inside the heads that ``lora.sites`` may name (none by default)."""
        return {}

    # -- data -------------------------------------------------------------------------------------
    def build_datasets(self, img_size: int):
        """Validated, split, lazily decoded Ray datasets: a :class:`prism.data.TrainData`."""
        raise NotImplementedError(f"task '{self.name}' does not train")

    @abstractmethod
    def collate_fn(self) -> CollateFn:
        """A Ray Data collate class (``NumpyBatchCollateFn`` …): numpy batch → ``(inputs, targets)``."""

    # -- training ---------------------------------------------------------------------------------
    @abstractmethod
    def loss(self, outputs: dict[str, torch.Tensor], targets: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss to backpropagate, and per-part values for logging."""

    @abstractmethod
    def metrics(self) -> MetricAccumulator:
        """A fresh accumulator for one evaluation pass."""

    # -- inference --------------------------------------------------------------------------------
    @abstractmethod
    def predictions(self, model: nn.Module, inputs: dict[str, torch.Tensor], tta: bool | list[str] = True
                    ) -> dict[str, Any]:
        """Batched predictions for device ``inputs``; ``tta`` True = the task's configured views."""

    @abstractmethod
    def preprocess(self, image: Image.Image, options: PredictOptions) -> tuple[dict[str, np.ndarray], dict]:
        """One RGB image → (model inputs without batch dim, e.g. ``{"image": uint8 (S, S, 3)}``, meta for
        :meth:`postprocess`, e.g. the original size)."""

    @abstractmethod
    def postprocess(self, prediction: dict[str, Any], meta: dict, options: PredictOptions) -> dict[str, Any]:
        """One image's predictions (batch dim removed) → its JSON-able result."""

    def results_frame(self, results: list[dict[str, Any]]) -> pd.DataFrame:
        """Postprocessed results as a flat table (one row per image)."""
        import pandas as pd

        return pd.json_normalize(results)

    # -- bundle -----------------------------------------------------------------------------------
    def label_maps(self) -> dict[str, Any]:
        """Whatever maps model indices back to names (saved with every registered model)."""
        return {}

    def artifacts(self, model: nn.Module) -> dict[str, bytes]:
        """Extra files the bundle needs (relative name → bytes): text embeddings, prototypes, a PCA basis."""
        return {}

    def load_artifacts(self, model: nn.Module, artifacts: dict[str, bytes]) -> None:
        """Take back what :meth:`artifacts` wrote (called by :func:`prism.inference.bundle.load_bundle`);
        nothing to do for a task without artifacts."""
        return None

    def components(self, model: nn.Module) -> dict[str, dict[str, str]]:
        """Frozen components the heads load from elsewhere, ``{name: {"sha256", "source"}}`` (a SAM decoder
        checkpoint, a CLIP text tower): recorded in the bundle manifest and checked when it loads."""
        return {}

    def figures(self, stats: dict[str, Any]) -> dict[str, Any]:
        """Figures (artifact path → matplotlib Figure) from :meth:`MetricAccumulator.export` output."""
        return {}

    def tables(self, stats: dict[str, Any]) -> dict[str, pd.DataFrame]:
        """Tables (artifact path → DataFrame, written as CSV) from :meth:`MetricAccumulator.export` output,
        e.g. per-class accuracy."""
        return {}

    def epoch_report(self, model: nn.Module, epoch: int) -> tuple[dict[str, float], dict[str, bytes]]:
        """Extra scores of the model after training epoch ``epoch`` (1-based), beside validation: metrics
        added to the epoch's report (``val/<name>/…``) and files (relative path → bytes) saved into that
        epoch's checkpoint folder. Called on every worker with the same weights; default: none."""
        return {}, {}

    # -- classes added while serving (Serve's /classes) ----------------------------------------------
    def add_classes_error(self) -> str | None:
        """Why this model cannot take classes from example images while it serves, or None when it can
        (then :meth:`class_from_examples` and :meth:`set_added_classes` are implemented)."""
        return f"the {self.name} task does not add classes from example images"

    def class_from_examples(self, predictions: dict[str, torch.Tensor]) -> np.ndarray:
        """Predictions of a new class's example images (outputs of :meth:`predictions`, (B, …)) → the class's
        entry, a float32 vector that :meth:`set_added_classes` takes back."""
        raise NotImplementedError(self.add_classes_error())

    def set_added_classes(self, added: dict[str, np.ndarray]) -> None:
        """Classes added while serving, ``{name: entry}`` (from :meth:`class_from_examples`), replacing the
        previous set; predictions that ask for them (the task's options say how) rank them."""
        raise NotImplementedError(self.add_classes_error())

    def parse_options(self, options: PredictOptions | dict[str, Any] | None) -> PredictOptions:
        """``options`` validated as this task's :attr:`options_class` (``ValueError`` naming bad keys)."""
        if isinstance(options, self.options_class):
            return options
        raw = options.model_dump(exclude_none=True) if isinstance(options, BaseModel) else dict(options or {})
        return self.options_class.model_validate(raw)
