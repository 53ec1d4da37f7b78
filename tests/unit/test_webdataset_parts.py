"""The parts of ``data.source: webdataset`` that need no Ray: shard patterns, checks, the split, decoding."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from prism.config import ConfigError, load_config
from prism.data.table import BadRowsError
from prism.data.webdataset import DecodeShardSamples, check_shards, expand_shards, in_val_split
from tests.conftest import CIRCLES_JOB
from tests.helpers.shards import CLASSES, members, sketch_shards


def test_brace_patterns_expand_in_order():
    assert expand_shards(["s3://b/train-{000..002}.tar", "x.tar", "s3://b/train-000.tar"]) == [
        "s3://b/train-000.tar", "s3://b/train-001.tar", "s3://b/train-002.tar", "x.tar"]


def test_shard_writer_round_trips_and_names_the_pattern(tmp_path):
    shards = sketch_shards(tmp_path, n=25, per_shard=10)
    assert [p.name for p in shards.shards] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert shards.samples == 25 and shards.pattern.endswith("train-{000000..000002}.tar")
    assert [str(p) for p in shards.shards] == expand_shards([shards.pattern])
    sample = next(iter(members(shards.shards[0]).values()))
    assert set(sample) == {"png", "cls", "txt"} and CLASSES[int(sample["cls"])] == sample["txt"].decode()
    assert (tmp_path / "shards" / "classes.txt").read_text().split() == CLASSES


def test_missing_and_empty_shards(tmp_path):
    shards = sketch_shards(tmp_path, n=10, per_shard=10)
    empty = tmp_path / "shards" / "empty.tar"
    tarfile.open(empty, "w").close()
    with pytest.raises(FileNotFoundError, match=r"1 of 2 shard\(s\) not found:\n  .*nope\.tar"):
        check_shards([str(shards.shards[0]), str(tmp_path / "nope.tar")])
    with pytest.raises(BadRowsError, match=r"empty\.tar: empty shard"):
        check_shards([str(shards.shards[0]), str(empty)])
    kept = check_shards([str(shards.shards[0]), str(empty)], on_bad_rows="skip")
    assert kept.shards == [str(shards.shards[0])] and kept.skipped["shard"].tolist() == [str(empty)]


def test_val_split_is_a_stable_fraction():
    keys = [f"{i:08d}" for i in range(20000)]
    chosen = [in_val_split("s3://b/train-000007.tar", k, 0.2) for k in keys]
    assert abs(np.mean(chosen) - 0.2) < 0.01
    assert chosen == [in_val_split("/elsewhere/train-000007.tar", k, 0.2) for k in keys]  # the name, not the place


def batch_of(shard, n=4) -> dict[str, np.ndarray]:
    items = list(members(shard).items())[:n]
    cols = {"__key__": np.array([k for k, _ in items], dtype=object),
            "__url__": np.array([str(shard)] * len(items), dtype=object)}
    for ext in ("png", "cls", "txt"):
        cols[ext] = np.array([m.get(ext) for _, m in items], dtype=object)
    return cols


def test_decode_marks_bad_samples_naming_shard_and_key(tmp_path):
    shard = sketch_shards(tmp_path, n=8, per_shard=8).shards[0]
    batch = batch_of(shard)
    batch["png"][1] = b"not an image"
    batch["cls"][2] = b"9"
    batch["png"][3] = None
    decode = DecodeShardSamples(28, CLASSES, label="cls", image_exts=("png",))
    with pytest.raises(BadRowsError, match=r"3 bad sample\(s\)") as err:
        decode(batch)
    text = str(err.value)
    keys = batch["__key__"]
    assert f"{shard}: sample '{keys[1]}': undecodable image" in text
    assert f"sample '{keys[2]}': cls '9' is not a class index in 0..3" in text
    assert f"sample '{keys[3]}': no image member (png)" in text
    out = DecodeShardSamples(28, CLASSES, image_exts=("png",), on_bad_rows="skip")(batch)
    assert out["_keep"].tolist() == [True, False, False, False] and out["image"].shape == (4, 28, 28, 3)
    assert out["y_label"][0] == int(batch["cls"][0])
    by_name = DecodeShardSamples(28, CLASSES, label="txt", image_exts=("png",), on_bad_rows="skip")
    batch["txt"][0] = b"zebra"
    assert by_name(batch)["_keep"].tolist() == [False, False, True, False]


def test_webdataset_source_config(tmp_path):
    base = {"task": {"name": "classify", "classes": CLASSES}, "backbone": {"name": "dinov2_tiny"},
            "stages": [{"kind": "probe", "epochs": 1, "lr": {"head": 1e-3}}]}
    cfg = load_config(raw={**base, "data": {"source": "webdataset", "webdataset": {"train": "a-{0..3}.tar"}}})
    assert cfg.data.webdataset.train == ["a-{0..3}.tar"] and cfg.data.webdataset.val is None
    with pytest.raises(ConfigError, match="give the training shards"):
        load_config(raw={**base, "data": {"source": "webdataset"}})
    multihead = load_config(CIRCLES_JOB).model_dump(mode="json")
    multihead["data"]["source"] = "webdataset"
    with pytest.raises(ConfigError, match="task 'multihead' reads csv, not 'webdataset'"):
        load_config(raw=multihead)


def test_quickdraw_files_become_train_test_and_heldout_shards(tmp_path):
    from prism.data.shards import quickdraw_to_shards
    from prism.data.synth import write_sketch_ndjson

    write_sketch_ndjson(tmp_path / "nd", ["cat", "dog", "sun"], per_class=10)
    (tmp_path / "nd" / "sun.ndjson").rename(tmp_path / "nd" / "full_simplified_sun.ndjson")
    out = quickdraw_to_shards(tmp_path / "nd", tmp_path / "qd", ["cat", "dog"], ["sun"], per_class=10,
                              test_fraction=0.2, size=24, per_shard=8, progress=False)
    assert {k: v.samples for k, v in out.items()} == {"train": 16, "test": 4, "heldout": 10}
    seen = [m for shard in out["train"].shards + out["test"].shards for m in members(shard).values()]
    assert sorted(m["txt"].decode() for m in seen) == ["cat"] * 10 + ["dog"] * 10
    assert all(["cat", "dog"][int(m["cls"])] == m["txt"].decode() for m in seen)
    held = [m for shard in out["heldout"].shards for m in members(shard).values()]
    assert {m["txt"] for m in held} == {b"sun"} and {m["cls"] for m in held} == {b"0"}
    assert (tmp_path / "qd" / "heldout_classes.txt").read_text() == "sun\n"
    with pytest.raises(ValueError, match="overlap"):
        quickdraw_to_shards(tmp_path / "nd", tmp_path / "x", ["cat"], ["cat"], progress=False)


def test_data_shards_command(tmp_path, capsys):
    from prism.cli.main import main
    from prism.data.synth import generate_sketches

    src = generate_sketches(tmp_path / "src", n=12, size=24, classes=CLASSES, progress=False)
    assert main(["data", "shards", str(src / "labels.csv"), "--out", str(tmp_path / "s"), "--classes",
                 ",".join(CLASSES), "--per-shard", "5"]) == 0
    assert "wrote 12 samples in 3 shard(s)" in capsys.readouterr().out


@pytest.mark.parametrize("train", [False, True], ids=["validation", "training"])
def test_a_drawing_is_the_same_tensor_from_a_labels_csv_or_a_shard(tmp_path, train):
    """The two data sources of a classify job feed the loop alike: the drawing of CSV row i and of shard
    sample i (``prism data shards`` of that CSV) decode to the same uint8 pixels, with the same augmentation
    for the same row seed, and the same class index."""
    import pandas as pd

    from prism.data.images import DecodeImages

    shards = sketch_shards(tmp_path, n=6, per_shard=6)
    labels = pd.read_csv(tmp_path / "src-train" / "labels.csv")
    seeds = np.linspace(0.05, 0.95, 6)
    augment = {"train": True, "hflip": True, "crop_scale": (0.5, 1.0), "brightness": 0.2} if train else {}
    paths = np.array([str(tmp_path / "src-train" / p) for p in labels["image"]])
    from_csv = DecodeImages(24, **augment)({"path": paths, **({"aug_seed": seeds} if train else {})})
    shard_batch = {**batch_of(shards.shards[0], n=6), **({"aug_seed": seeds} if train else {})}
    from_shard = DecodeShardSamples(24, CLASSES, label="cls", image_exts=("png",), **augment)(shard_batch)
    assert from_shard["_keep"].all() and from_csv["image"].shape == (6, 24, 24, 3)
    np.testing.assert_array_equal(from_shard["image"], from_csv["image"])
    assert from_shard["y_label"].tolist() == [CLASSES.index(c) for c in labels["label"]]
    if train:  # augmented indeed: not the plain resize
        plain = DecodeImages(24)({"path": paths})
        assert not np.array_equal(plain["image"], from_csv["image"])
