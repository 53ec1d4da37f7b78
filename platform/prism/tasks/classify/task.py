"""The single-label classification task: K classes, one probability vector per image."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import Field
from ray.data.collate_fn import NumpyBatchCollateFn
from torch import nn

from prism.tasks.base import PredictOptions, Task
from prism.tasks.classify.config import ClassifyTaskConfig
from prism.tasks.classify.loss import classify_loss
from prism.tasks.classify.metrics import ClassifyMetrics
from prism.tasks.classify.model import ClassifyHead, build_head
from prism.tasks.views import mean_softmax, tta_views, view_outputs

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from prism.backbones import Backbone

__all__ = ["ClassifyCollate", "ClassifyOptions", "ClassifyTask"]

TARGET = "y_label"


class ClassifyOptions(PredictOptions):
    """Request options of the classifier."""

    top_k: int | None = Field(None, ge=1, description="how many classes to list, most probable first "
                              "(default: the model's task.top_k)")


class ClassifyCollate(NumpyBatchCollateFn):
    """Ray Data batch ``{"image": uint8 (B, S, S, 3), "y_label": int64 (B,)}`` →
    ``({"image": uint8 tensor (B, S, S, 3)}, {"y_label": int64 tensor (B,)})``."""

    def __call__(self, batch: dict[str, np.ndarray]):
        inputs = {"image": torch.from_numpy(np.ascontiguousarray(batch["image"]))}
        return inputs, {TARGET: torch.from_numpy(np.array(batch[TARGET], dtype=np.int64))}


class ClassifyTask(Task):
    """One label per image out of ``cfg.task.classes``."""

    name = "classify"
    options_class = ClassifyOptions

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tcfg: ClassifyTaskConfig = cfg.task
        self.classes = list(self.tcfg.classes)

    # -- examples ----------------------------------------------------------------------------------
    @classmethod
    def example_job(cls) -> dict[str, Any]:
        """Seven classes (so top-5 is reported) on the tiny DINOv2 backbone at 28 px, an MLP head."""
        return {
            "task": {"name": "classify", "classes": [f"class_{i}" for i in range(7)], "label_smoothing": 0.1,
                     "head": {"hidden": [16]}, "tta": ["hflip"], "class_weights": {"class_0": 2.0}},
            "backbone": {"name": "dinov2_tiny", "img_size": 28},
            "lora": {"rank": 4, "last_k": 1},
            "stages": [{"kind": "probe", "epochs": 1, "lr": {"head": 1e-2}},
                       {"kind": "lora", "epochs": 1, "lr": {"head": 1e-2, "lora": 1e-2}}],
        }

    def example_batch(self, n: int, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        s = self.img_size
        return {"image": rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8),
                TARGET: rng.integers(0, len(self.classes), n).astype(np.int64)}

    # -- model -------------------------------------------------------------------------------------
    def build_heads(self, backbone: Backbone) -> ClassifyHead:
        return build_head(self.tcfg, backbone.embed_dim)

    # -- data (the labels-table hooks of prism.data.datasets) ---------------------------------------
    def label_columns(self) -> list[str]:
        return [self.tcfg.label_column]

    def unknown_labels(self, df: pd.DataFrame) -> pd.Series:
        """Per row, a message for a missing label or one that is not a class ('' = fine)."""
        col = df[self.tcfg.label_column].astype(str).str.strip()
        known = set(self.classes)
        shown = self.classes if len(self.classes) <= 10 else [*self.classes[:10], "…"]
        return col.map(lambda v: "" if v in known else
                       ("missing label" if v in ("", "nan") else f"label {v!r} is not one of {len(known)} classes "
                        f"{shown} (task.classes / task.classes_file)"))

    def encode_labels(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        index = {c: i for i, c in enumerate(self.classes)}
        return {TARGET: np.array([index[str(v).strip()] for v in df[self.tcfg.label_column]], dtype=np.int64)}

    def stratify_key(self, df: pd.DataFrame) -> np.ndarray:
        return df[self.tcfg.label_column].astype(str).str.strip().to_numpy()

    def build_datasets(self, img_size: int):
        from prism.data import build_datasets

        return build_datasets(self.cfg, self, img_size)

    def collate_fn(self) -> ClassifyCollate:
        return ClassifyCollate()

    # -- training ----------------------------------------------------------------------------------
    def loss(self, outputs, targets):
        loss = classify_loss(self.tcfg, outputs["logits"], targets[TARGET])
        return loss, {"loss/ce": float(loss.detach())}

    def metrics(self) -> ClassifyMetrics:
        return ClassifyMetrics(self.tcfg)

    # -- inference ---------------------------------------------------------------------------------
    def tta_views(self, tta: bool | list[str] = True) -> list[str]:
        """``identity`` plus the configured ``task.tta`` (True), none (False) or an explicit list."""
        return tta_views(self.tcfg.tta, tta)

    def predictions(self, model: nn.Module, inputs: dict[str, torch.Tensor], tta: bool | list[str] = True
                    ) -> dict[str, torch.Tensor]:
        """``{"image": (B, 3, S, S)}`` → ``{"probs": (B, K), "embedding": (B, D)}`` float32: probabilities
        averaged over :meth:`tta_views` in log space, and the mean head embedding of the views."""
        views = view_outputs(model, inputs, self.tta_views(tta))
        return {"probs": mean_softmax(views["logits"]),
                "embedding": torch.stack([e.float() for e in views["embedding"]]).mean(dim=0)}

    def preprocess(self, image: Image.Image, options: PredictOptions) -> tuple[dict[str, np.ndarray], dict]:
        """RGB image → ``{"image": uint8 (S, S, 3)}`` (resized as training resized) and its original size."""
        from prism.data.images import resize_rgb

        return {"image": resize_rgb(image, self.img_size)}, {"size": list(image.size)}

    def postprocess(self, prediction: dict[str, torch.Tensor], meta: dict, options: PredictOptions
                    ) -> dict[str, Any]:
        """``{"probs": (K,)}`` → ``{"prediction", "probability", "top_k": [{"class", "probability"}, …]}``,
        ``top_k`` (the option, else ``task.top_k``, at most K) classes, most probable first."""
        probs = prediction["probs"].float()
        k = min(getattr(options, "top_k", None) or self.tcfg.top_k, len(self.classes))
        values, indices = probs.topk(k)
        ranked = [{"class": self.classes[int(i)], "probability": round(float(v), 6)}
                  for v, i in zip(values, indices, strict=True)]
        return {"prediction": ranked[0]["class"], "probability": ranked[0]["probability"], "top_k": ranked}

    def results_frame(self, results: list[dict[str, Any]]) -> pd.DataFrame:
        """One row per image: ``image``, ``prediction``, ``probability``, ``top2`` … with their probabilities."""
        import pandas as pd

        rows = []
        for r in results:
            row: dict[str, Any] = {"image": r.get("image"), "prediction": r["prediction"],
                                   "probability": r["probability"]}
            for j, entry in enumerate(r["top_k"][1:], start=2):
                row[f"top{j}"], row[f"top{j}_probability"] = entry["class"], entry["probability"]
            rows.append(row)
        return pd.DataFrame(rows)

    # -- bundle / reports --------------------------------------------------------------------------
    def label_maps(self) -> dict[str, Any]:
        return {"classes": list(self.classes)}

    def figures(self, stats: dict[str, Any]) -> dict[str, Any]:
        """``confusion.png`` (K ≤ 30), ``confused_pairs.png`` and ``class_accuracy.png``."""
        from prism.tasks.classify.metrics import per_class_table
        from prism.tasks.figures import accuracy_histogram, confusion_figure, most_confused_figure

        if "support" not in stats:
            return {}
        figs = {"confused_pairs.png": most_confused_figure(stats["confused"], self.classes, stats["support"]),
                "class_accuracy.png": accuracy_histogram(per_class_table(stats, self.classes)["accuracy"])}
        if "confusion" in stats:
            figs["confusion.png"] = confusion_figure(np.asarray(stats["confusion"]), self.classes)
        return figs

    def tables(self, stats: dict[str, Any]) -> dict[str, pd.DataFrame]:
        """``per_class.csv``: support, correct, accuracy, precision, recall and F1 of every class."""
        from prism.tasks.classify.metrics import per_class_table

        return {"per_class.csv": per_class_table(stats, self.classes)} if "support" in stats else {}
