"""Labels CSV validation: every bad row is named; skip mode drops and reports them."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from prism.data.images import DecodeImages, check_decodable
from prism.data.table import BadRowsError, read_label_table
from prism.tasks.multihead.config import MultiHeadTaskConfig
from prism.tasks.multihead.labels import unknown_labels

CFG = MultiHeadTaskConfig.model_validate({"heads": [{"name": "presence", "classes": ["yes", "no"]}]})


def check(df):
    return unknown_labels(CFG, df)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(tmp_path / "img" / f"{i}.png")
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return tmp_path


def write(folder, rows, columns=("image", "presence")):
    p = folder / "labels.csv"
    pd.DataFrame(rows, columns=list(columns)).to_csv(p, index=False)
    return p


def test_clean_table_resolves_paths_relative_to_csv(folder):
    csv = write(folder, [["img/0.png", "yes"], ["img/1.png", ""], ["img/2.png", "no"]])
    t = read_label_table(csv, "image", ["presence"], check)
    assert len(t.rows) == 3 and t.skipped.empty
    assert t.rows["path"].tolist()[0] == str((folder / "img" / "0.png").resolve())
    assert t.rows["line"].tolist() == [2, 3, 4]


def test_errors_name_each_file_and_line(folder):
    csv = write(folder, [["img/0.png", "yes"], ["img/missing.png", "no"], ["img/1.png", "maybe"]])
    with pytest.raises(BadRowsError) as err:
        read_label_table(csv, "image", ["presence"], check)
    msg = str(err.value)
    assert "line 3: img/missing.png: file not found" in msg
    assert "line 4: img/1.png: presence='maybe' is not one of ['yes', 'no']" in msg
    assert "data.on_bad_rows=skip" in msg


def test_skip_drops_and_reports(folder):
    csv = write(folder, [["img/0.png", "yes"], ["img/missing.png", "no"], ["img/1.png", "maybe"]])
    t = read_label_table(csv, "image", ["presence"], check, on_bad_rows="skip")
    assert t.rows["image"].tolist() == ["img/0.png"]
    assert sorted(t.skipped["line"].tolist()) == [3, 4]


def test_missing_column_lists_what_is_there(folder):
    csv = write(folder, [["img/0.png", "yes"]], columns=("file", "presence"))
    with pytest.raises(BadRowsError, match=r"lacks column\(s\) \['image'\].*it has \['file', 'presence'\]"):
        read_label_table(csv, "image", ["presence"], check)


def test_missing_csv(folder):
    with pytest.raises(FileNotFoundError, match="labels CSV not found"):
        read_label_table(folder / "nope.csv", "image", ["presence"], check)


def test_undecodable_image_is_named(folder):
    batch = {"path": np.array([str(folder / "img" / "0.png"), str(folder / "img" / "broken.png")], dtype=object)}
    out = check_decodable(batch)
    assert out["path"].tolist() == [str(folder / "img" / "broken.png")]  # only bad rows come back
    assert "UnidentifiedImageError" in out["reason"][0]
    with pytest.raises(ValueError, match="broken.png"):
        DecodeImages(16)({"path": batch["path"]})


@pytest.mark.parametrize("train", [False, True])
def test_decode_gives_uint8_square_batches(folder, train):
    paths = np.array([str(folder / "img" / f"{i}.png") for i in range(3)], dtype=object)
    out = DecodeImages(16, train=train, rot90=True, brightness=0.2)({"path": paths, "y_presence": np.array([0, 1, 0])})
    assert out["image"].shape == (3, 16, 16, 3) and out["image"].dtype == np.uint8
    assert out["y_presence"].tolist() == [0, 1, 0] and "path" not in out
