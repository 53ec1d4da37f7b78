"""The detection task: boxes of a COCO file's categories, from a deformable DETR decoder on the backbone.

::

    inputs {"image": (B, 3, S, S)} (letterboxed) → heads → {"logits": (B, Q, K), "boxes": (B, Q, 4), "aux"}
    loss: Hungarian-matched focal + L1 + GIoU on every layer   (prism.tasks.detection.loss)
    predictions: the last layer's logits and boxes (canvas cxcywh); metrics: COCO AP in original pixels
    postprocess → {"detections": [{"bbox": [x, y, w, h] pixels, "category_id", "category", "score"}]}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from prism.tasks.base import PredictOptions, Task
from prism.tasks.detection.augment import BoxTransform, canvas_to_image
from prism.tasks.detection.batches import DetectionCollate
from prism.tasks.detection.coco_eval import to_coco_detections
from prism.tasks.detection.coco_report import COUNT_THRESHOLD
from prism.tasks.detection.loss import SetCriterion
from prism.tasks.detection.matcher import HungarianMatcher
from prism.tasks.detection.metrics import CocoDetectionMetrics, top_detections
from prism.tasks.detection.model import build_detection_heads

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from prism.backbones import Backbone

__all__ = ["DetectionOptions", "DetectionTask"]


class DetectionOptions(PredictOptions):
    """Request options of the detector (unset = the job's ``task`` settings)."""

    score_threshold: float | None = Field(None, ge=0, le=1, description="drop detections scoring below this")
    max_detections: int | None = Field(None, ge=1, description="at most this many detections, best first")


class DetectionTask(Task):
    """Boxes of ``task.categories`` (the job config fills them from the training COCO file when unset)."""

    name = "detection"
    options_class = DetectionOptions

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tcfg = cfg.task
        if not self.tcfg.categories:
            raise ValueError("task.categories is empty; the job config fills it from data.coco.train")
        self.categories = [{"id": int(c["id"]), "name": str(c.get("name", c["id"]))} for c in self.tcfg.categories]
        self.category_ids = [c["id"] for c in self.categories]
        self.letterbox = BoxTransform(self.img_size)  # the eval geometry, built once for every request
        lo = self.tcfg.loss
        matcher = HungarianMatcher(lo.class_weight, lo.bbox_weight, lo.giou_weight, lo.focal_alpha, lo.focal_gamma)
        self.criterion = SetCriterion(matcher, lo.class_weight, lo.bbox_weight, lo.giou_weight, lo.focal_alpha,
                                      lo.focal_gamma)

    # -- examples ----------------------------------------------------------------------------------
    @classmethod
    def example_job(cls) -> dict[str, Any]:
        """Two categories on the tiny DINOv2 at 28 px, a small lightweight decoder, LoRA on its last block."""
        return {"task": {"name": "detection", "categories": [{"id": 1, "name": "circle"}, {"id": 4, "name": "square"}],
                         "decoder": {"preset": "lightweight", "dim": 32, "ffn": 64, "queries": 6}},
                "backbone": {"name": "dinov2_tiny", "img_size": 28}, "lora": {"rank": 4, "last_k": 1},
                "stages": [{"kind": "probe", "epochs": 1, "lr": {"head": 1e-3}},
                           {"kind": "lora", "epochs": 1, "lr": {"head": 1e-3, "lora": 1e-3}}]}

    def example_batch(self, n: int, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        s = self.img_size
        boxes, labels = np.empty(n, dtype=object), np.empty(n, dtype=object)
        for i in range(n):
            k = int(rng.integers(0, 3))
            xy = rng.uniform(0.2, 0.6, (k, 2))
            boxes[i] = np.concatenate([xy, rng.uniform(0.1, 0.3, (k, 2))], 1).astype(np.float32)
            labels[i] = rng.integers(0, len(self.categories), k).astype(np.int64)
        return {"image": rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8),
                "image_id": np.arange(1, n + 1, dtype=np.int64), "size": np.full((n, 2), s, dtype=np.int64),
                "boxes": boxes, "labels": labels}

    # -- model -------------------------------------------------------------------------------------
    def build_heads(self, backbone: Backbone) -> nn.Module:
        return build_detection_heads(self.tcfg.decoder, backbone.embed_dim, len(self.categories))

    # -- data --------------------------------------------------------------------------------------
    def build_datasets(self, img_size: int):
        from prism.data.coco_datasets import build_coco_datasets

        return build_coco_datasets(self.cfg, self.category_ids, img_size)

    def collate_fn(self) -> DetectionCollate:
        return DetectionCollate()

    # -- training ----------------------------------------------------------------------------------
    def loss(self, outputs, targets):
        layers = [*outputs.get("aux", []), {"logits": outputs["logits"], "boxes": outputs["boxes"]}]
        if not self.tcfg.loss.aux:
            layers = layers[-1:]
        return self.criterion(layers, targets)

    def metrics(self) -> CocoDetectionMetrics:
        return CocoDetectionMetrics(None, self.category_ids, self.img_size, self.tcfg.max_detections,
                                    [c["name"] for c in self.categories],
                                    self.tcfg.score_threshold or COUNT_THRESHOLD)

    # -- inference ---------------------------------------------------------------------------------
    def predictions(self, model: nn.Module, inputs: dict[str, torch.Tensor], tta: bool | list[str] = True
                    ) -> dict[str, torch.Tensor]:
        """``{"logits": (B, Q, K), "boxes": (B, Q, 4)}`` float32, canvas-normalised cxcywh (no TTA views)."""
        out = model(inputs)
        return {"logits": out["logits"].float(), "boxes": out["boxes"].float()}

    def preprocess(self, image: Image.Image, options: PredictOptions) -> tuple[dict[str, np.ndarray], dict]:
        """RGB image → the eval letterbox ``{"image": uint8 (S, S, 3)}``; meta: the original (W, H)."""
        canvas, _, _, _ = self.letterbox(np.asarray(image.convert("RGB")), np.zeros((0, 4)),
                                                      np.zeros(0, dtype=np.int64))
        return {"image": canvas}, {"size": list(image.size)}

    def postprocess(self, prediction: dict[str, Any], meta: dict, options: PredictOptions) -> dict[str, Any]:
        o = options if isinstance(options, DetectionOptions) else DetectionOptions()
        k = o.max_detections or self.tcfg.max_detections
        threshold = self.tcfg.score_threshold if o.score_threshold is None else o.score_threshold
        scores, labels, boxes = top_detections(prediction["logits"][None], prediction["boxes"][None], k)
        size = tuple(int(v) for v in (meta.get("size") or (self.img_size, self.img_size)))
        dets = to_coco_detections(0, canvas_to_image(boxes[0].double().cpu(), size, self.img_size), scores[0],
                                  labels[0], size, self.category_ids)
        names = {c["id"]: c["name"] for c in self.categories}
        return {"detections": [{"bbox": [round(v, 2) for v in d["bbox"]], "category_id": d["category_id"],
                                "category": names[d["category_id"]], "score": round(d["score"], 4)}
                               for d in dets if d["score"] >= threshold]}

    def results_frame(self, results: list[dict[str, Any]]) -> pd.DataFrame:
        """One row per image: its detection count, the best one, and all of them as JSON (``[{bbox,
        category_id, category, score}]``, pixels); ``prism predict --format json`` keeps them nested."""
        import json

        import pandas as pd

        rows = []
        for r in results:
            dets = r["detections"]
            best = dets[0] if dets else {}
            rows.append({"image": r.get("image"), "n_detections": len(dets), "top_category": best.get("category"),
                         "top_score": best.get("score"), "detections": json.dumps(dets)})
        return pd.DataFrame(rows)

    # -- reports ----------------------------------------------------------------------------------
    def figures(self, stats: dict[str, Any]) -> dict[str, Any]:
        """``pr_curves.png``, ``class_ap.png``, ``confidence.png`` and ``class_counts.png`` of a detection
        report (:meth:`CocoDetectionMetrics.export`)."""
        from prism.tasks.detection import figures as f

        if "per_class" not in stats:
            return {}
        return {"pr_curves.png": f.pr_figure(stats), "class_ap.png": f.class_ap_figure(stats),
                "confidence.png": f.confidence_figure(stats), "class_counts.png": f.class_counts_figure(stats)}

    def tables(self, stats: dict[str, Any]) -> dict[str, pd.DataFrame]:
        """``per_class.csv``: AP, AP50, AP75, ground-truth and predicted boxes of every category."""
        import pandas as pd

        return {"per_class.csv": pd.DataFrame(stats["per_class"])} if "per_class" in stats else {}

    # -- bundle -----------------------------------------------------------------------------------
    def label_maps(self) -> dict[str, Any]:
        return {"categories": self.categories}
