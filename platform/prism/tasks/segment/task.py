"""The text-prompted segmentation task: the mask of the object a prompt names, from SAM's decoder on the
backbone's patches with the prompt's CLIP embedding as sparse tokens.

::

    inputs {"image": (B, 3, S, S), "text_tokens": (B, L)} → heads → {"masks": (B, 4g, 4g) logits, "iou": (B,)}
    loss: BCE + Dice on the masks resized to S (void ignored) [+ CLIP alignment]   metrics: IoU, Dice, … (prism.tasks.segment.metrics)
    postprocess → {"mask": PNG (the image's size), "rle": COCO RLE, "score": predicted IoU, "area", "prompt"}
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from prism.tasks.base import HeadSite, PredictOptions, Task
from prism.tasks.segment.batches import SegmentationCollate

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from prism.backbones import Backbone

__all__ = ["SegmentOptions", "SegmentTask", "dice_bce_loss", "iou_loss"]

DECODER_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
BUFFERS_FILE = "buffers.safetensors"


def _state_buffers(heads: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The heads' floating-point buffers that are state (the frozen tower's are rebuilt from its source)."""
    return [(n, b) for n, b in heads.named_buffers() if b.is_floating_point() and not n.startswith("frozen.")]


class SegmentOptions(PredictOptions):
    """Request options of the segmenter."""

    prompt: str | None = Field(None, description="what to segment, e.g. 'circle' (required)")
    threshold: float | None = Field(None, gt=0, lt=1, description="mask probability threshold (default: the job's)")


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0, bce_weight: float = 1.0
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """``logits`` (B, H, W) and ``target`` (B, H, W) uint8 0 / 1 / 255 void → the weighted sum of BCE (mean over
    valid pixels) and soft Dice (per image, averaged over images with a valid pixel), void pixels out of both."""
    valid = (target != 255).float()
    y = (target == 1).float()
    bce = (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * valid).sum() / valid.sum().clamp(min=1)
    p = logits.sigmoid() * valid
    inter = (p * y).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1) / (p.flatten(1).sum(1) + (y * valid).flatten(1).sum(1) + 1)
    labelled = valid.flatten(1).sum(1) > 0  # an all-void image (unlabelled) has no Dice of its own
    dice = dice[labelled].mean() if bool(labelled.any()) else dice.sum() * 0
    loss = bce_weight * bce + dice_weight * dice
    return loss, {"bce": float(bce.detach()), "dice": float(dice.detach())}


def iou_loss(predicted: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) predicted IoU vs the IoU of the thresholded ``logits`` (B, H, W) with ``target`` (B, H, W; 255
    void out) → (B,) squared errors (SAM's IoU-head loss; the actual IoU is a target, no gradient)."""
    valid = target != 255
    pred, y = (logits > 0) & valid, (target == 1) & valid
    inter, union = (pred & y).flatten(1).sum(1).float(), (pred | y).flatten(1).sum(1).float()
    actual = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return (predicted - actual) ** 2


def _loading_weights() -> bool:
    """False while the model is built on the meta device (plan checks): no weight file is read then."""
    return torch.empty(0).device.type != "meta"


class SegmentTask(Task):
    """Masks of prompted objects (``task.classes``: mask class index → prompt text)."""

    name = "segment"
    options_class = SegmentOptions
    ddp_unused_parameters = True  # SAM's prompt encoder: mask-prompt layers never run, point ones only with points

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tcfg = cfg.task
        if not self.tcfg.classes:
            raise ValueError("task.classes is empty; the job config fills it from the data's classes.json")
        self.classes = {int(k): str(v) for k, v in self.tcfg.classes.items()}
        self._tokenizer = None

    # -- examples ----------------------------------------------------------------------------------
    @classmethod
    def example_job(cls) -> dict[str, Any]:
        """The tiny DINOv2 at 28 px, the tiny SAM decoder on a 4 × 4 grid, clip_tiny's random text tower."""
        return {"task": {"name": "segment", "sam_type": "tiny", "decoder_grid": 4, "classes": {1: "circle", 2: "square"},
                         "text": {"name": "clip_tiny", "pretrained": False}},
                "backbone": {"name": "dinov2_tiny", "img_size": 28}, "lora": {"rank": 4, "last_k": 1},
                "stages": [{"kind": "probe", "epochs": 1, "lr": {"head": 1e-3}},
                           {"kind": "lora", "epochs": 1, "lr": {"head": 1e-3, "lora": 1e-3}}]}

    def example_batch(self, n: int, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        s = self.img_size
        masks = (rng.random((n, s, s)) < 0.3).astype(np.uint8)
        masks[:, :2] = 255
        prompts = [self.classes[int(k)] for k in rng.choice(list(self.classes), n)]
        return {"image": rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8), "mask": masks,
                "text_tokens": self.tokenize(prompts), "id": np.array([f"{i:03d}" for i in range(n)], dtype=object),
                "prompt": np.array(prompts, dtype=object)}

    def example_options(self) -> dict[str, Any]:
        return {"prompt": self.classes[min(self.classes)]}

    def tokenize(self, prompts: list[str]) -> np.ndarray:
        """Prompt strings → (N, L) int64 CLIP token ids of ``task.text``'s tokenizer."""
        if self._tokenizer is None:
            from prism.backbones.clip_text import text_tokenizer

            self._tokenizer = text_tokenizer(self.tcfg.text.name)
        return self._tokenizer(list(prompts)).numpy().astype(np.int64)

    # -- model -------------------------------------------------------------------------------------
    def build_heads(self, backbone: Backbone) -> nn.Module:
        from prism.backbones.clip_text import create_text_tower
        from prism.tasks.segment.model import TextPromptHeads
        from prism.tasks.segment.sam_parts import load_sam_parts

        t, load = self.tcfg.text, _loading_weights()
        tower = create_text_tower(t.name, pretrained=t.pretrained and load, weights=t.weights if load else None,
                                  seed=t.seed)
        prompts = [self.classes[k] for k in sorted(self.classes)] if self.tcfg.loss.align_weight > 0 else None
        teacher = None
        if self.tcfg.loss.distill_weight > 0:  # the backbone as its source gives it (no LoRA, never trained)
            from prism.backbones import create_backbone

            b = self.cfg.backbone
            teacher = create_backbone(b.name, pretrained=b.pretrained and load, weights=b.weights if load else None,
                                      img_size=b.img_size, seed=b.seed)
        heads = TextPromptHeads(backbone.embed_dim, tower, self.tcfg.sam_type, self.tcfg.decoder_grid, self.img_size,
                                self.tcfg.text_tokens, class_prompts=prompts, geometry_slots=self.tcfg.jitter.slots,
                                teacher=teacher)
        if self.tcfg.sam_checkpoint is not None and load:
            load_sam_parts(self.tcfg.sam_checkpoint, heads.prompt_encoder, heads.mask_decoder)
        return heads

    def lora_sites(self) -> dict[str, HeadSite]:
        """``decoder``: the attention projections of the blocks of SAM's two-way transformer (self-attention,
        token-to-image and image-to-token cross-attention); ``decoder_final``: its final token-to-image
        cross-attention (the stage plan's tiny late adapter)."""
        return {"decoder": HeadSite("mask_decoder.transformer.layers", DECODER_ATTENTION),
                "decoder_final": HeadSite("mask_decoder.transformer.final_attn_token_to_image", DECODER_ATTENTION)}

    # -- data --------------------------------------------------------------------------------------
    def build_datasets(self, img_size: int):
        from prism.data.voc_datasets import build_voc_datasets

        return build_voc_datasets(self.cfg, img_size)

    def collate_fn(self) -> SegmentationCollate:
        return SegmentationCollate()

    # -- training ----------------------------------------------------------------------------------
    def loss(self, outputs, targets):
        mask = targets["mask"]
        logits = F.interpolate(outputs["masks"][:, None].float(), size=mask.shape[-2:], mode="bilinear",
                               align_corners=False)[:, 0]
        lo = self.tcfg.loss
        loss, parts = dice_bce_loss(logits, mask, lo.dice_weight, lo.bce_weight)
        labelled = (mask != 255).flatten(1).any(1)  # unlabelled images (all void) add to distillation only
        if lo.iou_weight > 0 and bool(labelled.any()):  # SAM's IoU head learns the IoU its mask really has
            iou = iou_loss(outputs["iou"].float(), logits.detach(), mask)[labelled].mean()
            loss = loss + lo.iou_weight * iou
            parts["iou_mse"] = float(iou.detach())
        if lo.align_weight > 0 and bool(labelled.any()):
            from prism.tasks.segment.align import alignment_loss

            align = alignment_loss(outputs["region"][labelled], outputs["text"][labelled], outputs["class_text"],
                                   lo.align_temperature)
            loss = loss + lo.align_weight * align
            parts["align"] = float(align.detach())
        if lo.distill_weight > 0 and "teacher_patches" in outputs:
            distill = 1 - F.cosine_similarity(outputs["patches"].float(), outputs["teacher_patches"].float(),
                                              dim=-1).mean()
            loss = loss + lo.distill_weight * distill
            parts["distill"] = float(distill.detach())
        return loss, parts

    def metrics(self):
        from prism.tasks.segment.metrics import SegmentationMetrics

        return SegmentationMetrics(self.tcfg.threshold)

    # -- inference ---------------------------------------------------------------------------------
    def predictions(self, model: nn.Module, inputs: dict[str, torch.Tensor], tta: bool | list[str] = True
                    ) -> dict[str, torch.Tensor]:
        """``{"masks": (B, 4g, 4g) logits, "iou": (B,)}`` float32 (no TTA views)."""
        out = model(inputs)
        return {"masks": out["masks"].float(), "iou": out["iou"].float()}

    def preprocess(self, image: Image.Image, options: PredictOptions) -> tuple[dict[str, np.ndarray], dict]:
        """RGB image → ``{"image": uint8 (S, S, 3), "text_tokens": (L,)}``; meta: the original (W, H), prompt."""
        from PIL import Image as PILImage

        prompt = getattr(options, "prompt", None)
        if not prompt or not str(prompt).strip():
            raise ValueError("give a prompt: the text of what to segment (option prompt=…, e.g. 'circle'); the "
                             f"model was trained on {sorted(set(self.classes.values()))}")
        s = self.img_size
        resized = np.asarray(image.convert("RGB").resize((s, s), PILImage.Resampling.BILINEAR))
        return ({"image": resized, "text_tokens": self.tokenize([str(prompt)])[0]},
                {"size": list(image.size), "prompt": str(prompt)})

    def postprocess(self, prediction: dict[str, Any], meta: dict, options: PredictOptions) -> dict[str, Any]:
        from faster_coco_eval.core import mask as mask_utils
        from PIL import Image as PILImage

        from prism.tasks.outputs import BinaryOutput

        threshold = getattr(options, "threshold", None) or self.tcfg.threshold
        w, h = (int(v) for v in (meta.get("size") or (self.img_size, self.img_size)))
        logits = F.interpolate(prediction["masks"][None, None].float().cpu(), size=(h, w), mode="bilinear",
                               align_corners=False)[0, 0]
        mask = (logits.sigmoid() >= threshold).numpy()
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
        buf = io.BytesIO()
        PILImage.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
        png = buf.getvalue()
        return {"prompt": meta.get("prompt"), "mask": BinaryOutput(png), "rle": {"size": [h, w], "counts": counts},
                "area": int(mask.sum()), "score": round(float(prediction["iou"]), 4)}

    def results_frame(self, results: list[dict[str, Any]]) -> pd.DataFrame:
        """One row per image: its prompt, mask file (or base64), area in pixels and predicted IoU."""
        import pandas as pd

        return pd.DataFrame([{"image": r.get("image"), "prompt": r.get("prompt"), "mask": r.get("mask"),
                              "area": r.get("area"), "score": r.get("score")} for r in results])

    def epoch_report(self, model: nn.Module, epoch: int) -> tuple[dict[str, float], dict[str, bytes]]:
        """With ``task.dual_circle``: its images predicted with its prompt and scored every ``every`` epochs
        → ``val/dual_circle/<metric>`` and ``dual_circle/`` files (per_image.csv, metrics.json, renders)."""
        dc = self.tcfg.dual_circle
        if dc is None or (epoch % dc.every and epoch != self.cfg.total_epochs):
            return {}, {}
        import tempfile
        from pathlib import Path

        from prism.inference.predictor import Predictor
        from prism.tasks.segment.dual_circle import evaluate_folder, predict_masks

        was_training = model.training
        predictor = Predictor(self.cfg, self, model, next(model.parameters()).device)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                masks = predict_masks(predictor, dc.images, dc.prompt, Path(tmp) / "masks")
                report = evaluate_folder(dc.circles, masks, Path(tmp) / "report", dc.images, visualise=dc.visualise)
                files = {f"dual_circle/{p.relative_to(Path(tmp) / 'report').as_posix()}": p.read_bytes()
                         for p in sorted((Path(tmp) / "report").rglob("*")) if p.is_file()}
        finally:
            model.train(was_training)
        return {f"val/dual_circle/{k}": v for k, v in report["metrics"].items()}, files

    # -- reports ----------------------------------------------------------------------------------
    def figures(self, stats: dict[str, Any]) -> dict[str, Any]:
        """``iou_per_image.png``: the spread of per-image IoU, one histogram per prompt."""
        from prism.tasks.segment.figures import iou_histogram

        return {"iou_per_image.png": iou_histogram(stats["per_image"])} if stats.get("per_image") else {}

    def tables(self, stats: dict[str, Any]) -> dict[str, pd.DataFrame]:
        """``per_image.csv``: id, prompt, IoU, Dice, accuracy, precision, recall, F1 and scored pixels of each
        (image, prompt) row; ``per_prompt.csv``: their means per prompt."""
        import pandas as pd

        if not stats.get("per_image"):
            return {}
        from prism.tasks.segment.metrics import METRICS, ROW_KEYS

        rows = pd.DataFrame(stats["per_image"], columns=list(ROW_KEYS))
        per_prompt = rows.groupby("prompt", as_index=False).agg(
            rows=("id", "size"), **{f"mean_{m}": (m, "mean") for m in METRICS})
        return {"per_image.csv": rows, "per_prompt.csv": per_prompt}

    # -- bundle -----------------------------------------------------------------------------------
    def label_maps(self) -> dict[str, Any]:
        return {"classes": {str(k): v for k, v in self.classes.items()}}

    def artifacts(self, model: nn.Module) -> dict[str, bytes]:
        """``buffers.safetensors``: the heads' float buffers outside the frozen tower (the prompt encoder's
        random Fourier matrix, which a SAM checkpoint sets and no optimiser touches)."""
        from safetensors.torch import save

        return {BUFFERS_FILE: save({n: b.detach().cpu().contiguous() for n, b in _state_buffers(model.heads)})}

    def load_artifacts(self, model: nn.Module, artifacts: dict[str, bytes]) -> None:
        from safetensors.torch import load

        if BUFFERS_FILE not in artifacts:
            raise ValueError(f"a segment bundle holds {BUFFERS_FILE}; this one has {sorted(artifacts) or 'none'}")
        saved = load(artifacts[BUFFERS_FILE])
        own = dict(_state_buffers(model.heads))
        if set(saved) != set(own):
            raise ValueError(f"{BUFFERS_FILE} holds {sorted(saved)}, the model's heads {sorted(own)}")
        with torch.no_grad():
            for n, b in own.items():
                b.copy_(saved[n])

    def components(self, model: nn.Module) -> dict[str, dict[str, str]]:
        """The frozen CLIP text tower, rebuilt from ``task.text`` when a bundle loads (its weights' sha256 is
        checked then). SAM's decoder is not one: it trains, and its weights are in the bundle."""
        from prism.backbones.base import state_dict_sha256

        t = self.tcfg.text
        out = {"text_tower": {"sha256": state_dict_sha256(model.heads.frozen["text"].text),
                              "source": str(t.weights) if t.weights else (f"{t.name} (open_clip)" if t.pretrained
                                                                          else f"{t.name} (random, seed {t.seed})")}}
        return out
