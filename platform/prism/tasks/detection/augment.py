"""Geometry that moves boxes with the image (torchvision ``transforms.v2`` on ``tv_tensors``), to a square
canvas the model takes.

::

    image uint8 (H, W, 3) + boxes (N, 4) pixel xywh + labels (N,)
      train:  [IoU crop, p = crop_p] → [horizontal flip, p = 0.5] → letterbox → drop boxes under 1 px
      eval:   letterbox
      letterbox: resize so the longer side is S (aspect kept), pad right / bottom to S × S with zeros
    → image uint8 (S, S, 3), boxes (N', 4) cxcywh normalised to the canvas, labels (N',), scale r = S / max(H', W')

Predictions come back in canvas coordinates; :func:`canvas_to_image` maps them to the original image's
normalised coordinates (what :func:`~prism.tasks.detection.coco_eval.to_coco_detections` takes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.transforms import v2

__all__ = ["BoxTransform", "canvas_to_image"]


@dataclass
class BoxTransform:
    """The transform of one image and its boxes (see the module); ``train`` adds the random crop and flip."""

    size: int
    train: bool = False
    hflip: bool = True
    crop_p: float = 0.5

    def __post_init__(self) -> None:
        ops: list = []
        if self.train:
            if self.crop_p > 0:
                ops.append(v2.RandomApply([v2.RandomIoUCrop()], p=self.crop_p))
            if self.hflip:
                ops.append(v2.RandomHorizontalFlip(p=0.5))
        self.random = v2.Compose(ops) if ops else None
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=1.0)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        h, w = image.shape[:2]
        img = tv_tensors.Image(torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1))  # own copy
        bx = tv_tensors.BoundingBoxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), format="XYWH",
                                      canvas_size=(h, w))
        sample = {"image": img, "boxes": bx, "labels": torch.as_tensor(labels, dtype=torch.int64)}
        if self.random is not None:
            sample = self.random(sample)
        img, bx = sample["image"], sample["boxes"]
        h2, w2 = img.shape[-2:]
        r = self.size / max(h2, w2)
        nh, nw = max(1, round(h2 * r)), max(1, round(w2 * r))
        img, bx = v2.functional.resize(img, [nh, nw], antialias=True), v2.functional.resize(bx, [nh, nw])
        img = v2.functional.pad(img, [0, 0, self.size - nw, self.size - nh])
        bx = v2.functional.pad(bx, [0, 0, self.size - nw, self.size - nh])
        sample = self.sanitize({"image": img, "boxes": bx, "labels": sample["labels"]})
        cxcywh = box_convert(sample["boxes"].as_subclass(torch.Tensor), "xywh", "cxcywh") / self.size
        return (sample["image"].permute(1, 2, 0).numpy(), cxcywh.numpy().astype(np.float32),
                sample["labels"].numpy(), float(r))


def canvas_to_image(boxes: torch.Tensor, size: tuple[int, int], canvas: int) -> torch.Tensor:
    """Canvas-normalised cxcywh (N, 4) of a letterboxed image of original ``size`` = (W, H) → normalised to
    the original image (the eval letterbox: no crop)."""
    w, h = size
    r = canvas / max(w, h)
    scale = torch.tensor([canvas / (r * w), canvas / (r * h)] * 2, dtype=boxes.dtype, device=boxes.device)
    return boxes * scale
