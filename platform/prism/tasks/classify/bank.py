"""A bank of zero-shot classes: names and unit class embeddings a classifier scores besides its trained head.

    kind "text"        CLIP text embeddings of the names (prompt templates averaged), scored against the
                       image tower's projected embedding (the predictions' ``image_embedding``)
    kind "prototypes"  mean normalised head embeddings of a few support images per class, scored against
                       the head's ``embedding``

Saved in a bundle as ``artifacts/zeroshot.safetensors`` (tensor ``embeddings`` (K, D) float32; the names,
kind, templates and shots in the header), so a registered model serves the classes it was never trained on.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Literal

import torch

from prism.tasks.classify.zeroshot import zero_shot_probs

__all__ = ["BANK_FILE", "ClassBank"]

BANK_FILE = "zeroshot.safetensors"
Kind = Literal["text", "prototypes"]
EMBEDDING_OF: dict[str, str] = {"text": "image_embedding", "prototypes": "embedding"}
"""Which prediction output a bank of each kind is scored against."""


@dataclass
class ClassBank:
    """``classes`` (K names) with ``embeddings`` (K, D) unit rows, float32."""

    kind: Kind
    classes: list[str]
    embeddings: torch.Tensor
    templates: list[str] = field(default_factory=list)
    shots: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in EMBEDDING_OF:
            raise ValueError(f"bank kind must be one of {sorted(EMBEDDING_OF)}, got {self.kind!r}")
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.classes) or not self.classes:
            raise ValueError(f"need one embedding row per class: {len(self.classes)} classes, embeddings "
                             f"{tuple(self.embeddings.shape)}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("zero-shot class names must be unique")
        self.embeddings = self.embeddings.detach().float().cpu().contiguous()

    @property
    def scored_output(self) -> str:
        """The prediction output this bank scores: ``image_embedding`` (text) or ``embedding`` (prototypes)."""
        return EMBEDDING_OF[self.kind]

    def probs(self, embeddings: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
        """(B, D) or (D,) embeddings → (B, K) or (K,) softmax(scale · cosine) over the bank's classes."""
        single = embeddings.ndim == 1
        p = zero_shot_probs(embeddings.reshape(1, -1) if single else embeddings, self.embeddings, scale)
        return p[0] if single else p

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        meta = {"kind": self.kind, "classes": json.dumps(self.classes), "templates": json.dumps(self.templates),
                "shots": json.dumps(self.shots)}
        return save({"embeddings": self.embeddings}, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> ClassBank:
        from safetensors.torch import load

        header_len = struct.unpack("<Q", data[:8])[0]  # safetensors: u64 header size, then the JSON header
        meta = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
        if "kind" not in meta or "classes" not in meta:
            raise ValueError(f"{BANK_FILE} has no zero-shot header (kind, classes)")
        return cls(meta["kind"], json.loads(meta["classes"]), load(data)["embeddings"],
                   json.loads(meta.get("templates", "[]")), json.loads(meta.get("shots", "null")))
