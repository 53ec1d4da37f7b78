"""The multi-head classification task: the object the train loop, predictor and Serve talk to."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from prism.engine.inputs import apply_view, to_model_input
from prism.tasks.base import Task
from prism.tasks.multihead.config import NA
from prism.tasks.multihead.labels import encode_labels, unknown_labels
from prism.tasks.multihead.loss import multihead_loss
from prism.tasks.multihead.metrics import MultiHeadMetrics
from prism.tasks.multihead.model import MultiHeadClassifier, build_heads
from prism.engine.precision import autocast, resolve_amp

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MultiHeadTask"]


class MultiHeadTask(Task):
    """Heads and classes from ``cfg.task``; conditional heads answer ``na`` where undefined."""

    name = "multihead"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tcfg = cfg.task
        self.mean: tuple[float, ...] = (0.485, 0.456, 0.406)
        self.std: tuple[float, ...] = (0.229, 0.224, 0.225)

    # -- model -------------------------------------------------------------------------------------
    def build_model(self) -> MultiHeadClassifier:
        from prism.adapters import add_lora
        from prism.backbones import create_backbone

        b = self.cfg.backbone
        backbone = create_backbone(b.name, pretrained=b.pretrained, weights=b.weights, img_size=b.img_size,
                                   seed=b.seed)
        if self.cfg.lora is not None:
            lo = self.cfg.lora
            add_lora(backbone, rank=lo.rank, alpha=lo.alpha, dropout=lo.dropout, last_k=lo.last_k,
                     targets=tuple(lo.targets))
        self.mean, self.std = tuple(backbone.mean), tuple(backbone.std)
        with torch.random.fork_rng():
            torch.manual_seed(self.cfg.train.seed)
            heads = build_heads(self.tcfg, backbone.embed_dim)
        return MultiHeadClassifier(backbone, heads, pooling=self.tcfg.pooling)

    @property
    def img_size(self) -> int:
        return int(self.cfg.backbone.img_size or 224)

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

    def collate(self, batch: dict[str, torch.Tensor], device: torch.device
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = to_model_input(batch["image"], self.mean, self.std, device)
        targets = {f"y_{h.name}": batch[f"y_{h.name}"].to(device, torch.int64) for h in self.tcfg.heads}
        return x, targets

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
        return ["identity"] + (list(self.tcfg.tta) if tta is True else list(tta or []))

    @torch.no_grad()
    def log_probs(self, model: nn.Module, x: torch.Tensor, tta: bool | list[str] = True
                  ) -> dict[str, torch.Tensor]:
        """``(B, 3, H, W)`` → ``{head: log of the view-averaged probabilities (B, K)}`` float32.

        The average over the views of :meth:`tta_views` is taken in log space (``logsumexp`` of each
        view's ``log_softmax`` minus ``log V``), so it stays finite where a probability underflows. These
        are valid logits: ``softmax`` of them is the averaged probabilities, and the cross-entropy of them
        is the loss of the averaged prediction. The forward runs in the job's mixed precision
        (``train.amp``, see :func:`resolve_amp`: bf16 or fp16 on CUDA, fp32 on CPU).
        """
        ops = self.tta_views(tta)
        amp = resolve_amp(self.cfg.train.amp, x.device)
        views: dict[str, list[torch.Tensor]] = {}
        for op in ops:
            with autocast(x.device, amp):
                logits = model(apply_view(x, op))
            for k, z in logits.items():
                views.setdefault(k, []).append(z.float().log_softmax(dim=-1))
        return {k: torch.stack(v).logsumexp(dim=0) - math.log(len(ops)) for k, v in views.items()}

    @torch.no_grad()
    def infer(self, model: nn.Module, x: torch.Tensor, tta: bool | list[str] = False) -> dict[str, torch.Tensor]:
        """``(B, 3, H, W)`` → ``{head: probabilities (B, K)}`` float32, averaged over the identity and TTA views.

        ``tta`` is False (identity only), True (the configured ``task.tta`` views) or an explicit list.
        """
        return {k: v.exp() for k, v in self.log_probs(model, x, tta).items()}

    @torch.no_grad()
    def validation_step(self, model: nn.Module, x: torch.Tensor, targets: dict[str, torch.Tensor],
                        tta: bool | list[str] = True) -> tuple[dict[str, torch.Tensor], float]:
        """One scored batch: ``({head: probabilities (B, K)}, loss)``, what :meth:`metrics` accumulates.

        ``x`` is ``(B, 3, H, W)`` and ``targets`` ``{"y_<head>": int64 (B,)}`` from :meth:`collate`. The
        probabilities are :meth:`infer`'s with ``tta`` (default True: the configured ``task.tta`` views,
        as ``prism evaluate``, ``prism predict`` and Serve default to), and the loss is the training loss
        of those averaged probabilities, so ``val/*`` metrics score what is served. With ``tta=False`` both
        are those of the raw model output.
        """
        log_p = self.log_probs(model, x, tta)
        loss, _ = self.loss(log_p, targets)
        return {k: v.exp() for k, v in log_p.items()}, float(loss)

    def postprocess(self, outputs: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        """``{head: probabilities (B, K)}`` → per image ``{head: {"prediction", "probabilities"}}``.

        A conditional head's prediction is ``na`` where its condition fails on the *predicted* classes
        of the heads it depends on; its probabilities are still reported (they are conditional).
        """
        probs = {k: v.detach().float().cpu().numpy() for k, v in outputs.items()}
        n = len(next(iter(probs.values())))
        results: list[dict[str, Any]] = []
        for i in range(n):
            pred = {h.name: h.classes[int(probs[h.name][i].argmax())] for h in self.tcfg.heads}
            row: dict[str, Any] = {}
            for h in self.tcfg.heads:
                defined = all(pred[p] in allowed for p, allowed in (h.only_when or {}).items())
                row[h.name] = {
                    "prediction": pred[h.name] if defined else NA,
                    "probabilities": {c: round(float(probs[h.name][i][j]), 6) for j, c in enumerate(h.classes)},
                }
            results.append(row)
        return results

    def build_datasets(self, img_size: int):
        from prism.data import build_datasets

        return build_datasets(self.cfg, self, img_size)

    def figures(self, stats: dict[str, Any]) -> dict[str, Any]:
        """Confusion matrices (rows = truth) per head as ``confusion/<head>.png``."""
        from prism.tasks.multihead.plots import confusion_figure

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
