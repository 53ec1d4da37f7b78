"""The multi-head classification task: the object the train loop, predictor and Serve talk to."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import Field
from ray.data.collate_fn import NumpyBatchCollateFn
from torch import nn

from prism.tasks.base import PredictOptions, Task
from prism.tasks.multihead.config import NA
from prism.tasks.multihead.labels import encode_labels, unknown_labels
from prism.tasks.multihead.loss import multihead_loss
from prism.tasks.multihead.metrics import MultiHeadMetrics
from prism.tasks.multihead.model import MultiHeadHeads, build_heads
from prism.tasks.views import mean_softmax, tta_views, view_outputs

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from prism.backbones import Backbone

__all__ = ["MultiHeadCollate", "MultiHeadOptions", "MultiHeadTask"]


class MultiHeadOptions(PredictOptions):
    """Request options of the multi-head classifier."""

    top_k: int | None = Field(None, ge=1, description="list only the k most probable classes of each head")


class MultiHeadCollate(NumpyBatchCollateFn):
    """Ray Data batch ``{"image": uint8 (B, S, S, 3), "y_<head>": int64 (B,)}`` →
    ``({"image": uint8 tensor (B, S, S, 3)}, {"y_<head>": int64 tensor (B,)})``."""

    def __init__(self, heads: list[str]):
        self.heads = list(heads)

    def __call__(self, batch: dict[str, np.ndarray]):
        inputs = {"image": torch.from_numpy(np.ascontiguousarray(batch["image"]))}
        targets = {f"y_{h}": torch.from_numpy(np.asarray(batch[f"y_{h}"], dtype=np.int64)) for h in self.heads}
        return inputs, targets


class MultiHeadTask(Task):
    """Heads and classes from ``cfg.task``; conditional heads answer ``na`` where undefined."""

    name = "multihead"
    options_class = MultiHeadOptions

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tcfg = cfg.task

    # -- examples ----------------------------------------------------------------------------------
    @classmethod
    def example_job(cls) -> dict[str, Any]:
        """Two heads (one conditional) on the tiny DINOv2 backbone at 28 px, LoRA on its last block."""
        return {
            "task": {"name": "multihead", "tta": ["hflip"],
                     "heads": [{"name": "presence", "classes": ["yes", "maybe", "no"]},
                               {"name": "closure", "classes": ["closed", "open"],
                                "only_when": {"presence": ["yes", "maybe"]}}]},
            "backbone": {"name": "dinov2_tiny", "img_size": 28},
            "lora": {"rank": 4, "last_k": 1},
            "stages": [{"kind": "probe", "epochs": 1, "lr": {"head": 1e-2}},
                       {"kind": "lora", "epochs": 1, "lr": {"head": 1e-2, "lora": 1e-2}}],
        }

    def example_batch(self, n: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Random images and labels; a conditional head's label is -1 where its condition fails."""
        from prism.tasks.multihead.labels import IGNORE

        rng = np.random.default_rng(seed)
        s = self.img_size
        batch: dict[str, np.ndarray] = {"image": rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)}
        for h in self.tcfg.heads:
            batch[f"y_{h.name}"] = rng.integers(0, len(h.classes), n).astype(np.int64)
        for h in self.tcfg.heads:
            for parent, allowed in (h.only_when or {}).items():
                classes = next(p.classes for p in self.tcfg.heads if p.name == parent)
                ok = np.isin(batch[f"y_{parent}"], [classes.index(c) for c in allowed])
                batch[f"y_{h.name}"][~ok] = IGNORE
        return batch

    # -- model -------------------------------------------------------------------------------------
    def build_heads(self, backbone: Backbone) -> MultiHeadHeads:
        return build_heads(self.tcfg, backbone.embed_dim)

    # -- data --------------------------------------------------------------------------------------
    def label_columns(self) -> list[str]:
        return [h.name for h in self.tcfg.heads]

    def unknown_labels(self, df: pd.DataFrame) -> pd.Series:
        """Per row, a message naming labels that are not classes of their head ('' = fine)."""
        return unknown_labels(self.tcfg, df)

    def encode_labels(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        return encode_labels(self.tcfg, df)

    def stratify_key(self, df: pd.DataFrame) -> np.ndarray:
        """Labels of the first head: the split keeps its class proportions in train and val."""
        return df[self.tcfg.heads[0].name].fillna("").astype(str).to_numpy()

    def collate_fn(self) -> MultiHeadCollate:
        return MultiHeadCollate([h.name for h in self.tcfg.heads])

    # -- training ----------------------------------------------------------------------------------
    def loss(self, outputs, targets):
        return multihead_loss(self.tcfg, outputs, targets)

    def metrics(self) -> MultiHeadMetrics:
        return MultiHeadMetrics(self.tcfg)

    # -- inference ---------------------------------------------------------------------------------
    def tta_views(self, tta: bool | list[str] = True) -> list[str]:
        """The views averaged for ``tta``: ``identity`` plus, for True, the configured ``task.tta``
        (what ``prism predict``, ``prism evaluate``, Serve and training's validation use by default),
        for False none, or an explicit list."""
        return tta_views(self.tcfg.tta, tta)

    def predictions(self, model: nn.Module, inputs: dict[str, torch.Tensor], tta: bool | list[str] = True
                    ) -> dict[str, torch.Tensor]:
        """``{"image": (B, 3, S, S)}`` → ``{head: probabilities (B, K)}`` float32, averaged over :meth:`tta_views`.

        The average is taken in log space (``logsumexp`` of each view's ``log_softmax`` minus ``log V``),
        so it stays finite where a probability underflows. Training's validation, ``prism evaluate``,
        ``prism predict`` and Serve all score these.
        """
        views = view_outputs(model, inputs, self.tta_views(tta))
        return {k: mean_softmax(v) for k, v in views.items()}

    def preprocess(self, image: Image.Image, options: PredictOptions) -> tuple[dict[str, np.ndarray], dict]:
        """RGB image → ``{"image": uint8 (S, S, 3)}`` (resized as training resized) and its original size."""
        from prism.data.images import resize_rgb

        return {"image": resize_rgb(image, self.img_size)}, {"size": list(image.size)}

    def postprocess(self, prediction: dict[str, torch.Tensor], meta: dict, options: PredictOptions
                    ) -> dict[str, Any]:
        """``{head: probabilities (K,)}`` → ``{head: {"prediction", "probabilities"}}`` (``top_k`` classes,
        most probable first, when the option is set).

        A conditional head's prediction is ``na`` where its condition fails on the *predicted* classes
        of the heads it depends on; its probabilities are still reported (they are conditional).
        """
        top_k = getattr(options, "top_k", None)
        probs = {k: v.float().numpy() for k, v in prediction.items()}
        pred = {h.name: h.classes[int(probs[h.name].argmax())] for h in self.tcfg.heads}
        row: dict[str, Any] = {}
        for h in self.tcfg.heads:
            defined = all(pred[p] in allowed for p, allowed in (h.only_when or {}).items())
            ranked = [(c, round(float(probs[h.name][j]), 6)) for j, c in enumerate(h.classes)]
            if top_k is not None:
                ranked = sorted(ranked, key=lambda kv: kv[1], reverse=True)[:top_k]
            row[h.name] = {"prediction": pred[h.name] if defined else NA, "probabilities": dict(ranked)}
        return row

    def build_datasets(self, img_size: int):
        from prism.data import build_datasets

        return build_datasets(self.cfg, self, img_size)

    def figures(self, stats: dict[str, Any]) -> dict[str, Any]:
        """Confusion matrices (rows = truth) per head as ``confusion/<head>.png``."""
        from prism.tasks.figures import confusion_figure

        cms = stats.get("confusion", {})
        return {f"confusion/{h.name}.png": confusion_figure(np.asarray(cms[h.name]), h.classes, title=h.name)
                for h in self.tcfg.heads if h.name in cms}

    def results_frame(self, results: list[dict[str, Any]]) -> pd.DataFrame:
        """Results → one row per image: ``image``, ``<head>`` (prediction), ``<head>_prob_<class>``."""
        import pandas as pd

        rows = []
        for r in results:
            row: dict[str, Any] = {"image": r.get("image")}
            for h in self.tcfg.heads:
                row[h.name] = r[h.name]["prediction"]
                for c, p in r[h.name]["probabilities"].items():
                    row[f"{h.name}_prob_{c}"] = p
            rows.append(row)
        return pd.DataFrame(rows)

    def label_maps(self) -> dict[str, Any]:
        return {"heads": self.tcfg.label_maps(),
                "only_when": {h.name: h.only_when for h in self.tcfg.heads if h.only_when}}
