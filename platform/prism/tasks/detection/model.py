"""The detection heads on a backbone: feature pyramid → deformable DETR decoder.

::

    features["patches"] (B, h, w, C) → SimpleFeaturePyramid(scales) → [(B, D, H_l, W_l)]
      → DeformableDecoder → {"logits": (B, Q, K), "boxes": (B, Q, 4) canvas-normalised cxcywh,
                             "aux": [{"logits", "boxes"} of every earlier layer]}
"""

from __future__ import annotations

from typing import Any

from torch import nn

from prism.tasks.detection.decoder import DecoderSettings, DeformableDecoder
from prism.tasks.detection.pyramid import SimpleFeaturePyramid

__all__ = ["DetectionHeads", "build_detection_heads", "count_parameters"]


class DetectionHeads(nn.Module):
    """The pyramid and the decoder; ``forward(features, inputs)`` as every task's heads."""

    def __init__(self, embed_dim: int, classes: int, settings: DecoderSettings, scales: list[float]):
        super().__init__()
        self.pyramid = SimpleFeaturePyramid(embed_dim, settings.dim, scales)
        self.decoder = DeformableDecoder(settings, levels=len(scales), classes=classes)

    def forward(self, features: dict[str, Any], inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        outs = self.decoder(self.pyramid(features["patches"]))
        return {**outs[-1], "aux": outs[:-1]}


def build_detection_heads(decoder_cfg, embed_dim: int, classes: int) -> DetectionHeads:
    """The heads of a :class:`~prism.tasks.detection.config.DecoderConfig` for ``classes`` categories."""
    v = decoder_cfg.resolved()
    settings = DecoderSettings(layers=v["layers"], queries=v["queries"], dim=v["dim"], heads=v["heads"],
                               points=v["points"], ffn=v["ffn"], dropout=v["dropout"], refine=v["refine"])
    return DetectionHeads(embed_dim, classes, settings, [float(s) for s in v["scales"]])


def count_parameters(module: nn.Module) -> int:
    """The number of parameter elements of ``module``."""
    return sum(p.numel() for p in module.parameters())
