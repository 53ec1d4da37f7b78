"""Boxes move with the image: letterbox and flip on known boxes, painted boxes stay on their paint through
random crops, and predictions map back to the original image."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2

from prism.tasks.detection.augment import BoxTransform, canvas_to_image


def test_letterbox_scales_boxes_and_keeps_the_aspect():
    image = np.zeros((50, 100, 3), np.uint8)
    img, boxes, labels, r = BoxTransform(64)(image, np.array([[10, 10, 20, 10]]), np.array([2]))
    assert img.shape == (64, 64, 3) and r == 0.64 and labels.tolist() == [2]
    np.testing.assert_allclose(boxes[0] * 64, [(10 + 10) * 0.64, (10 + 5) * 0.64, 20 * 0.64, 10 * 0.64], atol=1e-4)
    assert img[33:].max() == 0  # padding below the 32-pixel-high content


def test_flip_mirrors_a_known_box():
    image = np.zeros((50, 100, 3), np.uint8)
    t = BoxTransform(100, train=True, crop_p=0.0)
    t.random = v2.RandomHorizontalFlip(p=1.0)  # always flip
    _, boxes, _, _ = t(image, np.array([[10, 10, 20, 10]]), np.array([0]))
    np.testing.assert_allclose(boxes[0] * 100, [100 - 10 - 10, 15, 20, 10], atol=1e-4)  # x' = W - x - w


def test_painted_boxes_keep_their_paint_through_random_crops_and_flips():
    torch.manual_seed(0)
    image = np.zeros((120, 160, 3), np.uint8)
    boxes = np.array([[10, 20, 40, 30], [90, 50, 50, 60], [60, 5, 20, 20]], dtype=np.float32)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    for (x, y, w, h), c in zip(boxes.astype(int), colours, strict=True):
        image[y:y + h, x:x + w] = c
    t = BoxTransform(96, train=True, crop_p=1.0)
    seen = 0
    for _ in range(30):
        img, out, labels, _ = t(image, boxes, np.arange(3))
        for (cx, cy, w, h), lab in zip(out * 96, labels, strict=True):
            x0, y0, x1, y1 = int(np.ceil(cx - w / 2)) + 1, int(np.ceil(cy - h / 2)) + 1, int(cx + w / 2) - 1, int(cy + h / 2) - 1
            if x1 <= x0 or y1 <= y0:
                continue
            inside = img[y0:y1, x0:x1].reshape(-1, 3).mean(0)
            assert np.argmax(inside) == lab and inside.max() > 200, (lab, inside)
            seen += 1
    assert seen > 30


def test_predictions_map_back_to_the_original_image():
    image = np.zeros((50, 100, 3), np.uint8)
    box = np.array([[10, 10, 20, 10]], dtype=np.float32)
    _, canvas_box, _, _ = BoxTransform(64)(image, box, np.array([0]))
    back = canvas_to_image(torch.from_numpy(canvas_box), (100, 50), 64)
    np.testing.assert_allclose(back[0].numpy() * [100, 50, 100, 50], [20, 15, 20, 10], atol=1e-3)
