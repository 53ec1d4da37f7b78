"""Detection batches: COCO rows → decoded, box-moved images (a Ray Data ``map_batches`` callable), and the
collate class that hands the train loop ragged targets as a list of dicts.

::

    rows   {"path", "image_id", "width", "height", "boxes": (N_i, 4) pixel xywh, "category_id": (N_i,),
            "iscrowd": (N_i,)}                                          (prism.data.coco.read_coco)
      └─ DecodeDetection(size, category_ids, train)
    batch  {"image": uint8 (B, S, S, 3), "image_id": (B,), "size": (B, 2) original (W, H),
            "boxes": B × (N'_i, 4) canvas cxcywh, "labels": B × (N'_i,) contiguous,
            validation only: "gt_boxes": B × (N_i, 4) pixel xywh, "gt_category_id", "gt_iscrowd", "gt_area"}
      └─ DetectionCollate
    (inputs {"image": uint8 tensor (B, S, S, 3)},
     targets [{"boxes": (N'_i, 4), "labels": (N'_i,), "image_id": int, "size": (W, H), "gt_*": arrays}, …])

Crowd boxes leave the training targets (COCO's evaluation reads them from the ground truth as "ignore").
Boxes that a crop or the letterbox leaves under one pixel are dropped by the transform. Validation batches
also carry each image's ground truth as the COCO file gives it (``gt_*``: every box, crowd flags, the
annotations' areas), which the metric scores against — so ``val/AP`` is COCO's on the file, not on the
targets the loss sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from prism.tasks.detection.augment import BoxTransform

__all__ = ["DecodeDetection", "DetectionCollate"]


class DecodeDetection:
    """``map_batches`` callable: COCO rows → the detection batch of the module docstring."""

    def __init__(self, size: int, category_ids: Sequence[int], train: bool = False, hflip: bool = True,
                 crop_p: float = 0.5):
        self.size = size
        self.index = {int(c): i for i, c in enumerate(category_ids)}
        self.transform = BoxTransform(size, train=train, hflip=hflip, crop_p=crop_p)
        self.keep_truth = not train

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from prism.data.images import decode_image, read_bytes
        from prism.data.table import BadRowsError

        n = len(batch["path"])
        images = np.empty((n, self.size, self.size, 3), dtype=np.uint8)
        boxes, labels, sizes = [], [], np.empty((n, 2), dtype=np.int64)
        for i, path in enumerate(batch["path"]):
            try:
                img = np.asarray(decode_image(read_bytes(str(path)), str(path)).convert("RGB"))
            except Exception as e:  # noqa: BLE001 — named and re-raised as a data error
                raise BadRowsError(f"image id {int(batch['image_id'][i])}: cannot decode {path}: {e}") from None
            keep = ~np.asarray(batch["iscrowd"][i], dtype=bool)
            b = np.asarray(batch["boxes"][i], dtype=np.float32).reshape(-1, 4)[keep]
            cats = np.asarray(batch["category_id"][i], dtype=np.int64)[keep]
            lab = np.array([self.index[int(c)] for c in cats], dtype=np.int64)
            images[i], out_boxes, out_labels, _ = self.transform(img, b, lab)
            boxes.append(out_boxes)
            labels.append(out_labels)
            sizes[i] = (img.shape[1], img.shape[0])
        out = {"image": images, "image_id": np.asarray(batch["image_id"], dtype=np.int64), "size": sizes,
               "boxes": _ragged(boxes), "labels": _ragged(labels)}
        if self.keep_truth:
            n_boxes = [len(np.asarray(b).reshape(-1, 4)) for b in batch["boxes"]]
            areas = batch["area"] if "area" in batch else [np.full(k, np.nan) for k in n_boxes]
            out.update(
                gt_boxes=_ragged([np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in batch["boxes"]]),
                gt_category_id=_ragged([np.asarray(c, dtype=np.int64).reshape(-1) for c in batch["category_id"]]),
                gt_iscrowd=_ragged([np.asarray(c, dtype=bool).reshape(-1) for c in batch["iscrowd"]]),
                gt_area=_ragged([np.asarray(a, dtype=np.float64).reshape(-1) for a in areas]))
        return out


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


class DetectionCollate(NumpyBatchCollateFn):
    """A detection batch → ``({"image": uint8 tensor}, [per-image target dicts])`` (ragged: a list, which
    Ray passes through as it is)."""

    def __call__(self, batch: dict[str, np.ndarray]):
        inputs = {"image": torch.from_numpy(np.ascontiguousarray(batch["image"]))}
        targets = [{"boxes": torch.as_tensor(np.asarray(b, dtype=np.float32).reshape(-1, 4)),
                    "labels": torch.as_tensor(np.asarray(lab, dtype=np.int64).reshape(-1)),
                    "image_id": int(i), "size": tuple(int(v) for v in s)}
                   for b, lab, i, s in zip(batch["boxes"], batch["labels"], batch["image_id"], batch["size"],
                                           strict=True)]
        for key in (k for k in batch if k.startswith("gt_")):  # the file's ground truth, for the metric only
            for t, value in zip(targets, batch[key], strict=True):
                t[key] = np.asarray(value)
        return inputs, targets
