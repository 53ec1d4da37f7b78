"""Segmentation rows → batches without Ray: the prompted object's mask (void kept), one geometry for image
and mask, CLIP tokens of the prompt; the Dice + BCE loss ignores void and is lowest on the right mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prism.data.synth import generate_textseg
from prism.data.voc import read_voc
from prism.tasks.segment.batches import DecodeSegmentation, SegmentationCollate, object_mask
from prism.tasks.segment.task import dice_bce_loss


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = generate_textseg(tmp_path_factory.mktemp("ts"), n=4, size=48, seed=3, progress=False)
    return read_voc(root, None, classes={1: "circle", 2: "square"})


def rows(table, n):
    return {k: table.rows[k].to_numpy()[:n] for k in table.rows.columns}


def test_object_mask_keeps_void_and_every_class_for_a_free_prompt():
    classes = np.array([[0, 1, 2], [255, 1, 0]], dtype=np.uint8)
    assert object_mask(classes, 1).tolist() == [[0, 1, 0], [255, 1, 0]]
    assert object_mask(classes, -1).tolist() == [[0, 1, 1], [255, 1, 0]]


def test_validation_batches_resize_image_and_mask_together(table):
    batch = DecodeSegmentation(32, "clip_tiny", train=False)(rows(table, 4))
    assert batch["image"].shape == (4, 32, 32, 3) and batch["mask"].shape == (4, 32, 32)
    assert batch["text_tokens"].shape[0] == 4 and batch["text_tokens"].dtype == np.int64
    assert list(batch["prompt"]) == ["circle", "square", "circle", "square"]
    for img, mask in zip(batch["image"], batch["mask"], strict=True):
        assert set(np.unique(mask)) <= {0, 1} and mask.sum() > 20
        assert img[mask == 1].max(axis=1).mean() > img[mask == 0].max(axis=1).mean() + 40  # the mask is on the shape
    inputs, targets = SegmentationCollate()(batch)
    assert inputs["image"].dtype == torch.uint8 and targets["mask"].shape == (4, 32, 32)
    assert targets["id"] == list(batch["id"]) and inputs["text_tokens"].shape == (4, batch["text_tokens"].shape[1])


def test_training_crops_and_flips_move_the_mask_with_the_image(table):
    torch.manual_seed(0)
    batch = DecodeSegmentation(32, "clip_tiny", train=True, crop_scale=(0.5, 1.0))(rows(table, 4))
    for img, mask in zip(batch["image"], batch["mask"], strict=True):
        if mask.sum() > 10:
            assert img[mask == 1].max(axis=1).mean() > img[mask == 0].max(axis=1).mean() + 40


def test_dice_bce_is_lowest_on_the_right_mask_and_ignores_void():
    target = torch.zeros(1, 8, 8, dtype=torch.uint8)
    target[0, 2:5, 2:5] = 1
    right = torch.where(target == 1, 8.0, -8.0).float()
    wrong = -right
    assert dice_bce_loss(right, target)[0] < 0.05 < dice_bce_loss(wrong, target)[0]
    voided = target.clone()
    voided[0, 0] = 255
    noisy = right.clone()
    noisy[0, 0] = 8.0  # wrong, but on void pixels
    assert float(dice_bce_loss(noisy, voided)[0]) == pytest.approx(float(dice_bce_loss(right, voided)[0]), abs=1e-6)
