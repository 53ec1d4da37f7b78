"""The detector's layers on a tiny ViT: pyramid and decoder shapes, every layer's outputs, the set loss
(empty images too), and a tiny model that learns to put its best box on a known object."""

from __future__ import annotations

import torch
from torchvision.ops import box_convert, box_iou

from prism.backbones import create_backbone
from prism.tasks.detection.decoder import DecoderSettings, DeformableDecoder
from prism.tasks.detection.loss import SetCriterion
from prism.tasks.detection.pyramid import SimpleFeaturePyramid

LIGHT = DecoderSettings(layers=2, queries=10, dim=32, heads=4, points=2, ffn=64)


def test_pyramid_levels_and_decoder_outputs_have_their_shapes():
    pyr = SimpleFeaturePyramid(48, 32, scales=(2.0, 1.0, 0.5))
    maps = pyr(torch.randn(2, 4, 4, 48))
    assert [tuple(m.shape) for m in maps] == [(2, 32, 8, 8), (2, 32, 4, 4), (2, 32, 2, 2)]
    outs = DeformableDecoder(LIGHT, levels=3, classes=5)(maps)
    assert len(outs) == 2
    for o in outs:
        assert o["logits"].shape == (2, 10, 5) and o["boxes"].shape == (2, 10, 4)
        assert (o["boxes"] > 0).all() and (o["boxes"] < 1).all()


def test_set_loss_covers_every_layer_and_images_without_objects():
    maps = SimpleFeaturePyramid(48, 32, scales=(1.0, 0.5))(torch.randn(2, 4, 4, 48))
    outs = DeformableDecoder(LIGHT, levels=2, classes=3)(maps)
    targets = [{"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
               {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    loss, parts = SetCriterion()(outs, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert {"loss/focal", "loss/l1", "loss/giou", "loss/focal/aux0"} <= set(parts)
    loss.backward()
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
    loss0, parts0 = SetCriterion()(DeformableDecoder(LIGHT, levels=2, classes=3)(maps), empty)
    assert torch.isfinite(loss0) and parts0["loss/l1"] == 0.0 and parts0["loss/focal"] > 0


def test_a_tiny_detector_learns_where_the_object_is():
    """Two images with a bright square at known places: after 150 steps the most confident query's box
    overlaps the square (IoU > 0.5), and the untrained model's does not."""
    torch.manual_seed(0)
    backbone = create_backbone("dinov2_tiny", img_size=56)
    pyr = SimpleFeaturePyramid(backbone.embed_dim, 32, scales=(2.0, 1.0))
    dec = DeformableDecoder(LIGHT, levels=2, classes=2)
    images = torch.zeros(2, 3, 56, 56)
    images[0, :, 8:24, 30:50] = 2.0
    images[1, :, 30:50, 6:22] = 2.0
    gt_xyxy = torch.tensor([[30, 8, 50, 24], [6, 30, 22, 50]], dtype=torch.float32) / 56
    targets = [{"labels": torch.tensor([1]), "boxes": box_convert(gt_xyxy[i:i + 1], "xyxy", "cxcywh")} for i in range(2)]
    params = [*backbone.parameters(), *pyr.parameters(), *dec.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)
    crit = SetCriterion()

    def best_iou():
        with torch.no_grad():
            out = dec(pyr(backbone(images)["patches"]))[-1]
        top = out["logits"][..., 1].argmax(1)
        boxes = box_convert(out["boxes"][torch.arange(2), top], "cxcywh", "xyxy")
        return torch.diag(box_iou(boxes, gt_xyxy))

    before = best_iou()
    first = None
    for _ in range(150):
        loss, _ = crit(dec(pyr(backbone(images)["patches"])), targets)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = best_iou()
    assert float(loss.detach()) < 0.5 * first
    print(f"IoU of the top box before {before.tolist()}, after {after.tolist()}; loss {first:.3f} → {float(loss.detach()):.3f}")
    assert (after > 0.5).all() and (before < 0.5).all(), (before, after)


def test_one_image_whose_coarsest_level_is_one_cell():
    """A single 28 px image (2 x 2 patches, a 1 x 1 level at scale 1/2) goes through: GroupNorm keeps at
    least two values per group (with one channel per group this raised)."""
    pyr = SimpleFeaturePyramid(48, 32, scales=(2.0, 1.0, 0.5)).eval()
    maps = pyr(torch.randn(1, 2, 2, 48))
    assert maps[-1].shape == (1, 32, 1, 1)
