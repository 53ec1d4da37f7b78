"""Segmentation batches: VOC rows → decoded image, the prompted object's mask moved with it, and the
prompt's CLIP tokens (a Ray Data ``map_batches`` callable); the collate class for the train loop.

::

    rows   {"id", "image", "mask", "class_index", "prompt"}                 (prism.data.voc.read_voc)
      └─ DecodeSegmentation(size, text_backbone, train)
    batch  {"image": uint8 (B, S, S, 3), "mask": uint8 (B, S, S) 0 / 1 / 255 void,
            "text_tokens": int64 (B, L), "id": (B,) str, "prompt": (B,) str
            [, "points": float32 (B, N, 2), "point_labels": int64 (B, N)]}      with task.jitter (geometry.py)
      └─ SegmentationCollate
    (inputs {"image": uint8 (B, S, S, 3), "text_tokens": (B, L)},
     targets {"mask": uint8 (B, S, S), "id": [B str], "prompt": [B str]})

The object's mask is ``mask == class_index`` (``class_index`` -1: every non-zero class); VOC's void (255)
stays void; a row without a mask file (``data.voc.unlabelled`` images) is void everywhere. Geometry is one transform on image and mask together (torchvision ``transforms.v2`` with a
``tv_tensors.Mask``): training takes a random resized crop and a horizontal flip, both resize to S × S
(bilinear for the image, nearest for the mask).
"""

from __future__ import annotations

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

__all__ = ["DecodeSegmentation", "SegmentationCollate", "object_mask"]

VOID = 255


def object_mask(classes: np.ndarray, class_index: int) -> np.ndarray:
    """(H, W) class indices → (H, W) uint8: 1 where the prompted object is, 0 elsewhere, 255 void."""
    out = (classes == class_index) if class_index >= 0 else ((classes > 0) & (classes != VOID))
    out = out.astype(np.uint8)
    out[classes == VOID] = VOID
    return out


class DecodeSegmentation:
    """``map_batches`` callable: VOC rows → the batch of the module docstring."""

    def __init__(self, size: int, text_backbone: str, train: bool = False, hflip: bool = True,
                 crop_scale: tuple[float, float] = (0.6, 1.0), jitter=None):
        self.size, self.text_backbone, self.train = size, text_backbone, train
        self.hflip, self.crop_scale = hflip, tuple(crop_scale)
        self.jitter = jitter if jitter is not None and jitter.slots > 0 else None
        self._rng = np.random.default_rng()
        self._tokenizer = None
        self._transform = None

    def _geometry(self):
        from torchvision.transforms import v2

        ops = []
        if self.train:
            ops.append(v2.RandomResizedCrop(self.size, scale=self.crop_scale, antialias=True))
            if self.hflip:
                ops.append(v2.RandomHorizontalFlip())
        else:
            ops.append(v2.Resize((self.size, self.size), antialias=True))
        return v2.Compose(ops)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from torchvision import tv_tensors

        from prism.backbones.clip_text import text_tokenizer
        from prism.data.images import decode_image, read_bytes
        from prism.data.table import BadRowsError
        from prism.data.voc import read_mask

        if self._tokenizer is None:
            self._tokenizer, self._transform = text_tokenizer(self.text_backbone), self._geometry()
        n = len(batch["image"])
        images = np.empty((n, self.size, self.size, 3), dtype=np.uint8)
        masks = np.empty((n, self.size, self.size), dtype=np.uint8)
        for i in range(n):
            try:
                img = np.asarray(decode_image(read_bytes(str(batch["image"][i])), str(batch["image"][i])).convert("RGB"))
                mask = (object_mask(read_mask(batch["mask"][i]), int(batch["class_index"][i])) if batch["mask"][i]
                        else np.full(img.shape[:2], VOID, dtype=np.uint8))  # unlabelled: every pixel void
            except Exception as e:  # noqa: BLE001 — named and re-raised as a data error
                raise BadRowsError(f"image id {batch['id'][i]}: {e}") from None
            image_t = tv_tensors.Image(torch.from_numpy(np.array(img)).permute(2, 0, 1))
            mask_t = tv_tensors.Mask(torch.from_numpy(mask)[None])
            image_t, mask_t = self._transform(image_t, mask_t)
            images[i] = image_t.permute(1, 2, 0).numpy()
            masks[i] = mask_t[0].numpy()
        tokens = self._tokenizer([str(p) for p in batch["prompt"]]).numpy().astype(np.int64)
        out = {"image": images, "mask": masks, "text_tokens": tokens,
               "id": np.asarray(batch["id"], dtype=object), "prompt": np.asarray(batch["prompt"], dtype=object)}
        if self.jitter is not None:  # training draws point / box prompts; validation sends every slot empty
            from prism.tasks.segment.geometry import jitter_prompts

            j = self.jitter
            if self.train:
                points, labels = jitter_prompts(masks, j.points, j.point_prob, j.box_prob, j.box_jitter, self._rng)
            else:
                points, labels = np.zeros((n, j.slots, 2), np.float32), np.full((n, j.slots), -1, np.int64)
            out.update(points=points, point_labels=labels)
        return out


class SegmentationCollate(NumpyBatchCollateFn):
    """A segmentation batch → ``({"image", "text_tokens"}, {"mask", "id", "prompt"})``."""

    def __call__(self, batch: dict[str, np.ndarray]):
        inputs = {"image": torch.from_numpy(np.ascontiguousarray(batch["image"])),
                  "text_tokens": torch.from_numpy(np.ascontiguousarray(batch["text_tokens"], dtype=np.int64))}
        if "points" in batch:  # prompt jitter (geometry.py): (B, N, 2) pixels and (B, N) labels
            inputs["points"] = torch.from_numpy(np.ascontiguousarray(batch["points"], dtype=np.float32))
            inputs["point_labels"] = torch.from_numpy(np.ascontiguousarray(batch["point_labels"], dtype=np.int64))
        targets = {"mask": torch.from_numpy(np.ascontiguousarray(batch["mask"], dtype=np.uint8))}
        for key in ("id", "prompt"):
            if key in batch:
                targets[key] = [str(v) for v in batch[key]]
        return inputs, targets
