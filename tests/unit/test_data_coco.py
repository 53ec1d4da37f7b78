"""COCO JSON in: real category ids kept, bad boxes named by image id (or skipped and counted), crowd kept,
and the synthetic shapes set round-trips through the reader into pycocotools' own view of it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prism.data.coco import read_coco
from prism.data.synth.shapes import SHAPE_CATEGORIES, generate_shapes


def write(tmp_path, anns, images=None):
    images = images or [{"id": 10, "file_name": "a.jpg", "width": 100, "height": 80}]
    p = tmp_path / "instances.json"
    p.write_text(json.dumps({"images": images, "annotations": anns,
                             "categories": [{"id": 3, "name": "cat"}, {"id": 17, "name": "dog"}]}))
    return p


def ann(i, bbox, cat=17, crowd=0, image_id=10):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": crowd, "area": 1.0}


def test_real_ids_and_crowd_are_kept(tmp_path):
    t = read_coco(write(tmp_path, [ann(1, [10, 10, 20, 30]), ann(2, [0, 0, 100, 80], cat=3, crowd=1)]))
    (row,) = t.rows.itertuples()
    assert t.category_ids == [3, 17] and list(row.category_id) == [17, 3] and list(row.iscrowd) == [False, True]
    np.testing.assert_array_equal(row.boxes[0], [10, 10, 20, 30])
    assert row.path.endswith("a.jpg")


def test_a_box_outside_its_image_names_the_image_or_is_skipped_and_counted(tmp_path):
    p = write(tmp_path, [ann(1, [90, 10, 30, 10]), ann(2, [5, 5, 0, 4]), ann(3, [1, 1, 5, 5])])
    with pytest.raises(ValueError, match=r"image id 10 \(a.jpg\), annotation 1: box .* outside the 100x80"):
        read_coco(p)
    t = read_coco(p, on_bad="skip")
    assert list(t.skipped["annotation_id"]) == [1, 2] and "degenerate" in t.skipped["reason"][1]
    assert len(t.rows.iloc[0].boxes) == 1


def test_unknown_image_or_category_and_non_coco_files_are_errors(tmp_path):
    with pytest.raises(ValueError, match="annotation 1 is of image id 99"):
        read_coco(write(tmp_path, [ann(1, [1, 1, 2, 2], image_id=99)]))
    with pytest.raises(ValueError, match="category id 5; the categories are \\[3, 17\\]"):
        read_coco(write(tmp_path, [ann(1, [1, 1, 2, 2], cat=5)]))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        read_coco(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="not a COCO instances file"):
        read_coco(tmp_path / "list.json")


def test_synthetic_shapes_round_trip_into_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    out = generate_shapes(tmp_path / "shapes", n=20, size=64, seed=3, progress=False)
    t = read_coco(out / "instances.json")
    assert t.category_ids == [c["id"] for c in SHAPE_CATEGORIES] == [1, 4, 7]
    assert len(t.rows) == 20 and all((out / r).is_file() for r in t.rows["path"])
    coco = COCO(str(out / "instances.json"))
    ours = t.ground_truth()
    assert len(ours["annotations"]) == len(coco.getAnnIds()) > 20
    for a, b in zip(sorted(ours["annotations"], key=lambda a: (a["image_id"], a["bbox"])),
                    sorted(coco.loadAnns(coco.getAnnIds()), key=lambda a: (a["image_id"], a["bbox"])), strict=True):
        assert a["category_id"] == b["category_id"] and np.allclose(a["bbox"], b["bbox"])
    with pytest.raises(ValueError, match="already holds"):
        generate_shapes(tmp_path / "shapes", n=2, progress=False)


def test_synthetic_boxes_are_tight_around_the_drawn_shapes():
    from prism.data.synth.shapes import shapes_sample

    checked = 0
    for i in range(40):
        img, anns = shapes_sample(5, i, size=96)
        if len(anns) != 1:
            continue
        bright = np.asarray(img).max(axis=2) >= 140
        ys, xs = np.flatnonzero(bright.sum(1) >= 2), np.flatnonzero(bright.sum(0) >= 2)
        x, y, w, h = anns[0]["bbox"]
        assert abs(xs.min() - x) <= 1 and abs(xs.max() + 1 - (x + w)) <= 1, (i, anns)
        assert abs(ys.min() - y) <= 1 and abs(ys.max() + 1 - (y + h)) <= 1, (i, anns)
        checked += 1
    assert checked >= 5
