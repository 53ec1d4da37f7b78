"""The single-label classification task: K classes, one probability vector per image."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import Field, field_validator
from ray.data.collate_fn import NumpyBatchCollateFn
from torch import nn

from prism.tasks.base import PredictOptions, Task
from prism.tasks.classify.bank import BANK_FILE, ClassBank
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
MAX_REQUEST_CLASSES = 1000
TEXT_CACHE = 32
"""Request-time class lists whose text embeddings a replica keeps (least recently used dropped)."""


class ClassifyOptions(PredictOptions):
    """Request options of the classifier."""

    top_k: int | None = Field(None, ge=1, description="how many classes to list, most probable first "
                              "(default: the model's task.top_k)")
    classes: list[str] | None = Field(
        None, min_length=2, max_length=MAX_REQUEST_CLASSES,
        description="zero-shot: score these class names instead of the trained classes, by CLIP text "
        "embeddings of the names through the model's prompt templates (CLIP backbones only); in a form, "
        "comma-separated, a JSON list, or the field repeated")
    zero_shot: bool = Field(False, description="score the model's zero-shot classes (added from text or "
                            "example images, saved with the model) instead of the trained classes")

    @field_validator("classes", mode="before")
    @classmethod
    def _names_from_text(cls, value: Any) -> Any:
        """A form field's text: a JSON list (``["a cat", "a dog"]``) or comma-separated names."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"not a JSON list of names: {exc.msg}") from None
            return [name for name in text.split(",")]
        return value


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
        self.bank: ClassBank | None = None
        """Zero-shot classes saved with the model (``artifacts/zeroshot.safetensors``), if any."""
        self._served: tuple[ClassBank, ClassBank] | None = None
        """(added, added + saved) for classes added while serving (Serve's ``POST /classes``; not saved with
        the model), replaced as one reference so a batch running meanwhile sees one set or the other."""
        self._text_tower = None
        self._text_banks: dict[tuple[str, ...], ClassBank] = {}

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
        averaged over :meth:`tta_views` in log space, and the mean head embedding of the views; CLIP
        backbones add ``"image_embedding": (B, E)``, the mean projected image embedding (what CLIP text
        embeddings are scored against)."""
        views = view_outputs(model, inputs, self.tta_views(tta))
        out = {"probs": mean_softmax(views["logits"])}
        for name in ("embedding", "image_embedding"):
            if name in views:
                out[name] = torch.stack([e.float() for e in views[name]]).mean(dim=0)
        return out

    def preprocess(self, image: Image.Image, options: PredictOptions) -> tuple[dict[str, np.ndarray], dict]:
        """RGB image → ``{"image": uint8 (S, S, 3)}`` (resized as training resized) and its original size."""
        from prism.data.images import resize_rgb

        return {"image": resize_rgb(image, self.img_size)}, {"size": list(image.size)}

    def postprocess(self, prediction: dict[str, torch.Tensor], meta: dict, options: PredictOptions
                    ) -> dict[str, Any]:
        """``{"probs": (K,)}`` → ``{"prediction", "probability", "top_k": [{"class", "probability"}, …]}``,
        ``top_k`` (the option, else ``task.top_k``, at most K) classes, most probable first.

        With the ``classes`` option (CLIP text) or ``zero_shot`` (the saved bank) the classes ranked are those
        instead, scored by cosine similarity of the image's embedding with theirs (:class:`ClassBank`)."""
        bank = self.request_bank(options)
        if bank is None:
            probs, names = prediction["probs"].float(), self.classes
        else:
            probs, names = bank.probs(prediction[bank.scored_output]), bank.classes
        k = min(getattr(options, "top_k", None) or self.tcfg.top_k, len(names))
        values, indices = probs.topk(k)
        ranked = [{"class": names[int(i)], "probability": round(float(v), 6)}
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

    # -- zero-shot ---------------------------------------------------------------------------------
    @property
    def has_text_tower(self) -> bool:
        """Whether the backbone is a CLIP image tower (so class names can be scored by its text tower)."""
        from prism.backbones.clip_text import text_tower_names

        return self.cfg.backbone.name in text_tower_names()

    def text_tower(self):
        """The frozen CLIP text tower of the backbone (built once: random init with ``backbone.seed``, the
        hub's weights, or the ``backbone.weights`` CLIP checkpoint), as :mod:`prism.backbones.clip_text`."""
        if self._text_tower is None:
            from prism.backbones.clip_text import create_text_tower

            if not self.has_text_tower:
                raise ValueError(f"backbone {self.cfg.backbone.name!r} has no text tower: zero-shot by class "
                                 "names needs a CLIP backbone (prototypes work with any backbone)")
            b = self.cfg.backbone
            self._text_tower = create_text_tower(b.name, pretrained=b.pretrained, weights=b.weights, seed=b.seed)
        return self._text_tower

    def text_bank(self, classes: list[str]) -> ClassBank:
        """A ``text`` bank of ``classes`` through ``task.zero_shot_templates`` (cached per class list)."""
        from prism.tasks.classify.zeroshot import text_class_embeddings

        key = tuple(classes)
        bank = self._text_banks.pop(key, None)
        if bank is None:
            templates = list(self.tcfg.zero_shot_templates)
            bank = ClassBank("text", list(classes), text_class_embeddings(self.text_tower(), classes, templates),
                             templates)
        self._text_banks[key] = bank
        while len(self._text_banks) > TEXT_CACHE:
            self._text_banks.pop(next(iter(self._text_banks)))
        return bank

    def request_bank(self, options: PredictOptions) -> ClassBank | None:
        """The zero-shot classes ``options`` asks for, or None for the trained head."""
        if getattr(options, "classes", None):
            return self.text_bank(options.classes)
        if getattr(options, "zero_shot", False):
            bank = self.zero_shot_bank()
            if bank is None:
                raise ValueError("zero_shot: this model has no zero-shot classes; add some with "
                                 "`prism evaluate --zero-shot … --save-bundle` or POST /classes, or pass classes")
            return bank
        return None

    def zero_shot_bank(self) -> ClassBank | None:
        """What ``zero_shot=true`` ranks: the saved classes and those added while serving (an added class
        replaces a saved one of the same name)."""
        served = self._served
        return self.bank if served is None else served[1]

    @property
    def added(self) -> ClassBank | None:
        """The classes added while serving (prototypes), if any."""
        served = self._served
        return None if served is None else served[0]

    def add_classes_error(self) -> str | None:
        if self.bank is not None and self.bank.kind == "text":
            return ("this model's zero-shot classes are CLIP text embeddings; classes from example images "
                    "(prototypes) would be scored on another scale. Serve the model without them, or add "
                    "classes by name with the request option classes")
        return None

    def class_from_examples(self, predictions: dict[str, torch.Tensor]) -> np.ndarray:
        """``{"embedding": (B, D)}`` of B example images → their prototype: the mean of the normalised
        embeddings, normalised, (D,) float32 (as :func:`~prism.tasks.classify.zeroshot.class_prototypes`)."""
        from prism.tasks.classify.zeroshot import class_prototypes

        emb = predictions["embedding"]
        return class_prototypes(emb, torch.zeros(len(emb), dtype=torch.long), 1)[0].numpy().astype(np.float32)

    def set_added_classes(self, added: dict[str, np.ndarray]) -> None:
        reason = self.add_classes_error()
        if reason is not None:
            raise ValueError(reason)
        if not added:
            self._served = None
            return
        new = ClassBank("prototypes", list(added),
                        torch.from_numpy(np.stack([np.asarray(v, np.float32) for v in added.values()])))
        saved = [] if self.bank is None else [(c, e) for c, e in zip(self.bank.classes, self.bank.embeddings,
                                                                       strict=True) if c not in added]
        rows = saved + list(zip(new.classes, new.embeddings, strict=True))
        self._served = (new, ClassBank("prototypes", [c for c, _ in rows], torch.stack([e for _, e in rows])))

    def parse_options(self, options):
        """The options, checked against this model: ``classes`` needs a CLIP backbone, ``zero_shot`` a
        saved bank, not both (``ValueError`` → HTTP 400 in Serve, before any image is decoded)."""
        opts = super().parse_options(options)
        if opts.classes is not None:
            if opts.zero_shot:
                raise ValueError("give either classes (zero-shot by name) or zero_shot (the saved classes)")
            if not self.has_text_tower:
                raise ValueError(f"classes: zero-shot by class names needs a CLIP backbone; this model's is "
                                 f"{self.cfg.backbone.name!r}")
            names = [c.strip() for c in opts.classes]
            if any(not n or len(n) > 200 for n in names) or len(set(names)) != len(names):
                raise ValueError("classes: names must be unique, non-empty and at most 200 characters")
            opts = opts.model_copy(update={"classes": names})
        if opts.zero_shot and self.zero_shot_bank() is None:
            raise ValueError("zero_shot: this model has no zero-shot classes saved with it")
        return opts

    # -- bundle / reports --------------------------------------------------------------------------
    def label_maps(self) -> dict[str, Any]:
        maps: dict[str, Any] = {"classes": list(self.classes)}
        if self.bank is not None:
            maps["zero_shot"] = {"kind": self.bank.kind, "classes": list(self.bank.classes)}
        return maps

    def artifacts(self, model: nn.Module) -> dict[str, bytes]:
        """``zeroshot.safetensors`` when the model has zero-shot classes (:attr:`bank`)."""
        return {} if self.bank is None else {BANK_FILE: self.bank.to_bytes()}

    def load_artifacts(self, model: nn.Module, artifacts: dict[str, bytes]) -> None:
        self.bank = ClassBank.from_bytes(artifacts[BANK_FILE]) if BANK_FILE in artifacts else None

    def components(self, model: nn.Module) -> dict[str, dict[str, str]]:
        """The CLIP text tower, when the saved zero-shot classes are text embeddings (checked at load)."""
        if self.bank is None or self.bank.kind != "text":
            return {}
        from prism.inference.bundle import backbone_source

        return {"text_tower": {"sha256": self.text_tower().weights_sha256,
                               "source": f"text tower of {backbone_source(self.cfg)}"}}

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
