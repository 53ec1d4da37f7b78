"""A labels CSV may name its images by URI (``s3://bucket/key``): kept as URIs (not turned into local
paths), checked for existence in the store, and decoded from it — against a local S3 server (moto)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from prism.data.images import DecodeImages
from prism.data.table import BadRowsError, read_label_table
from prism.data.uris import files_exist, is_uri
from tests.helpers.s3 import s3_server
from tests.helpers.shards import CLASSES, sketch_shards


def unknown(df: pd.DataFrame) -> pd.Series:
    return df["label"].map(lambda v: "" if v in CLASSES else f"label {v!r} unknown")


def test_a_labels_csv_of_s3_uris(tmp_path, monkeypatch):
    src = sketch_shards(tmp_path, n=4, per_shard=4)  # writes src-train/ (images + labels.csv) too
    local = pd.read_csv(tmp_path / "src-train" / "labels.csv")
    with s3_server("prism-images") as (env, s3):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        for rel in local["image"]:
            s3.upload_file(str(tmp_path / "src-train" / rel), "prism-images", f"sketches/{rel}")
        uris = [f"s3://prism-images/sketches/{rel}" for rel in local["image"]]
        missing = "s3://prism-images/sketches/images/nope.png"
        csv = tmp_path / "uris.csv"
        pd.DataFrame({"image": [*uris, missing], "label": [*local["label"], "cat"]}).to_csv(csv, index=False)

        assert files_exist([*uris[:1], missing, str(csv)]) == [True, False, True] and is_uri(uris[0])
        with pytest.raises(BadRowsError, match=rf"line 6: {missing}: file not found: {missing}"):
            read_label_table(csv, "image", ["label"], unknown)
        table = read_label_table(csv, "image", ["label"], unknown, on_bad_rows="skip")
        assert table.rows["path"].tolist() == uris and table.skipped["image"].tolist() == [missing]

        from_store = DecodeImages(24)({"path": np.array(uris)})["image"]
    from_disk = DecodeImages(24)({"path": np.array([str(tmp_path / "src-train" / p) for p in local["image"]])})
    np.testing.assert_array_equal(from_store, from_disk["image"])
    assert src.samples == 4
