"""Ragged targets (boxes, masks: a different count per image) reach the loop intact through Ray Data as a
list of dicts of tensors, the shape the task contract prescribes for them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

pytestmark = pytest.mark.ray


class BoxesCollate(NumpyBatchCollateFn):
    """``{"image", "n_boxes"}`` → ``({"image"}, [{"boxes": (n_i, 4)}, …])``: one dict per image."""

    def __call__(self, batch):
        targets = [{"boxes": torch.arange(int(n) * 4, dtype=torch.float32).reshape(int(n), 4),
                    "labels": torch.full((int(n),), i)} for i, n in enumerate(batch["n_boxes"])]
        return {"image": torch.from_numpy(batch["image"])}, targets


def test_a_list_of_dicts_of_ragged_tensors_survives_iter_torch_batches(ray_session):
    import ray.data

    counts = [0, 3, 1, 5]
    rows = [{"image": np.full((4, 4, 3), i, np.uint8), "n_boxes": n} for i, n in enumerate(counts)]
    (inputs, targets), = ray.data.from_items(rows).iter_torch_batches(
        batch_size=4, collate_fn=BoxesCollate(), device="cpu")
    assert inputs["image"].shape == (4, 4, 4, 3)
    assert isinstance(targets, list) and len(targets) == 4
    assert [t["boxes"].shape[0] for t in targets] == counts  # not concatenated into one (9, 4) tensor
    assert [t["labels"].tolist() for t in targets] == [[], [1, 1, 1], [2], [3] * 5]
