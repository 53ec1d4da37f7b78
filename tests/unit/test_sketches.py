"""Synthetic sketches in QuickDraw's simplified format, read back and rendered by prism.data.quickdraw."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from prism.data.quickdraw import QuickDrawError, read_ndjson, render_drawing
from prism.data.synth import SYNTH_GENERATORS
from prism.data.synth.sketches import class_template, sketch_record, write_sketch_ndjson


def test_records_follow_the_simplified_format_and_are_reproducible():
    rec = sketch_record("cat", 3, seed=0)
    assert rec == sketch_record("cat", 3, seed=0) and rec != sketch_record("cat", 4, seed=0)
    assert set(rec) == {"word", "countrycode", "timestamp", "recognized", "key_id", "drawing"}
    pts = np.concatenate([np.array(s).T for s in rec["drawing"]])
    assert pts.dtype.kind == "i" and pts.min(axis=0).tolist() == [0, 0] and pts.max() == 255
    assert all(len(xs) == len(ys) for xs, ys in rec["drawing"])


def test_classes_are_distinct_templates_that_every_split_shares():
    a, b = class_template("cat"), class_template("dog")
    assert [t.shape for t in class_template("cat")] == [t.shape for t in a]
    assert all(np.array_equal(x, y) for x, y in zip(class_template("cat"), a, strict=True))
    assert len(a) != len(b) or any(x.shape != y.shape or not np.allclose(x, y) for x, y in zip(a, b, strict=False))


def test_ndjson_round_trips_and_renders(tmp_path):
    files = write_sketch_ndjson(tmp_path, ["cat", "house"], per_class=5, seed=0)
    assert [f.name for f in files] == ["cat.ndjson", "house.ndjson"]
    drawings = list(read_ndjson(files[0]))
    assert len(drawings) == 5 and {d.word for d in drawings} == {"cat"}
    first = json.loads(files[0].read_text().splitlines()[0])
    np.testing.assert_array_equal(drawings[0].strokes[0], np.array(first["drawing"][0]).T)
    img = render_drawing(drawings[0].strokes, size=48)
    assert img.size == (48, 48) and img.mode == "RGB"
    arr = np.asarray(img)
    assert arr.min() < 80 and np.median(arr) == 255  # dark strokes on a white page
    assert (arr[:2] == 255).all() and (arr[:, :2] == 255).all()  # the margin stays blank


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "not JSON"),
    ('{"word": "cat"}', "needs 'word' and 'drawing'"),
    ('{"word": "cat", "drawing": []}', "non-empty list of strokes"),
    ('{"word": "cat", "drawing": [[[1, 2], [3]]]}', "stroke 0 is not"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.ndjson"
    path.write_text(json.dumps(sketch_record("cat", 0)) + "\n\n" + line + "\n")
    with pytest.raises(QuickDrawError, match=rf"bad\.ndjson:3: .*{message}"):
        list(read_ndjson(path))


def test_generator_writes_images_and_labels(tmp_path):
    out = SYNTH_GENERATORS["sketches"](tmp_path / "s", n=12, size=32, seed=0, classes=["a", "b", "c"],
                                       progress=False)
    df = pd.read_csv(out / "labels.csv")
    assert df.columns.tolist() == ["image", "label"] and df["label"].value_counts().to_dict() == {"a": 4, "b": 4, "c": 4}
    assert Image.open(out / df["image"][0]).size == (32, 32)
    with pytest.raises(ValueError, match="already holds a data set"):
        SYNTH_GENERATORS["sketches"](tmp_path / "s", n=12, size=32, progress=False)
