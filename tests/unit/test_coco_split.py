"""COCO splits and subsets: the id-hash split is disjoint and stable; a 'mini' subset of N images is drawn by
seed, saved and reloaded exactly; overfit mode validates on its own N training images; a test-dev file (no
annotations) reads as images without boxes; the annotation's own area is what COCO's size ranges use."""

from __future__ import annotations

import json

import pytest

from prism.config import JobConfig
from prism.data.coco import read_coco
from prism.data.coco_datasets import coco_split
from prism.data.synth.shapes import generate_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("shapes"), n=60, size=32, seed=3, progress=False) / "instances.json"


def job(shapes, **coco):
    return JobConfig.model_validate({"task": {"name": "detection"}, "backbone": {"name": "dinov2_tiny", "img_size": 28},
                                     "stages": [{"kind": "probe", "epochs": 1, "lr": {"head": 1e-3}}],
                                     "data": {"source": "coco", "coco": {"train": str(shapes), **coco},
                                              "val_fraction": 0.25, "split_seed": 1}})


def ids(table):
    return [int(i) for i in table.rows["image_id"]]


def test_hash_split_is_disjoint_stable_and_complete(shapes):
    train, val = coco_split(job(shapes))
    again_train, again_val = coco_split(job(shapes))
    assert ids(train) == ids(again_train) and ids(val) == ids(again_val)
    assert not set(ids(train)) & set(ids(val)) and len(ids(train)) + len(ids(val)) == 60
    assert 5 <= len(ids(val)) <= 25


def test_subset_by_seed_is_saved_and_reloaded_exactly(shapes, tmp_path):
    file = tmp_path / "mini" / "subset.json"
    first, _ = coco_split(job(shapes, subset=10, subset_seed=4, subset_file=str(file)))
    saved = json.loads(file.read_text())
    assert saved["image_ids"] == ids(first) and saved["seed"] == 4 and len(set(ids(first))) == 10
    other, _ = coco_split(job(shapes, subset=10, subset_seed=5))
    assert ids(other) != ids(first)
    reloaded, _ = coco_split(job(shapes, subset=10, subset_seed=5, subset_file=str(file)))  # the file wins
    assert ids(reloaded) == ids(first)
    with pytest.raises(ValueError, match="only 4[0-9] training images"):
        coco_split(job(shapes, subset=1000))


def test_overfit_validates_on_its_own_training_images(shapes):
    train, val = coco_split(job(shapes, overfit=8))
    assert ids(train) == ids(val) and len(ids(train)) == 8
    with pytest.raises(ValueError, match="overfit"):
        coco_split(job(shapes, overfit=8, subset=10))


def test_test_dev_file_without_annotations_and_annotation_area(tmp_path):
    data = {"images": [{"id": 5, "file_name": "a.jpg", "width": 40, "height": 30}],
            "categories": [{"id": 2, "name": "x"}]}
    path = tmp_path / "image_info.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="annotations"):
        read_coco(path)
    table = read_coco(path, require_annotations=False)
    assert not table.annotated and len(table.rows.iloc[0]["boxes"]) == 0
    data["annotations"] = [{"id": 1, "image_id": 5, "category_id": 2, "bbox": [0, 0, 10, 10], "area": 42.0}]
    path.write_text(json.dumps(data))
    table = read_coco(path)
    assert table.annotated and table.ground_truth()["annotations"][0]["area"] == 42.0
