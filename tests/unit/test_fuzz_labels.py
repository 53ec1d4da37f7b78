"""Label CSVs, fuzzed: the right rows with paths that resolve to the files, or an error naming each row.

Generated tables of images whose names hold spaces, quotes, commas, non-ASCII letters (in sub-folders too),
listed by relative or absolute path, written with every ``csv`` quoting style, ``\\n`` or ``\\r\\n``, with
blank lines and quoted line breaks in between, in UTF-8, UTF-8 with a byte-order mark, or Latin-1; some rows
name missing files or unknown labels, and some have a field too many. ``read_label_table`` must give exactly
the written rows (the path of each row the file it names, the labels as written, the line each record
starts on), or a :class:`BadRowsError` naming every bad row by that line, or, for a file that is not
UTF-8, an error saying so and where; never another exception, never a row that silently points elsewhere.
"""

from __future__ import annotations

import csv
import io
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from prism.data.table import BadRowsError, read_label_table
from prism.tasks.multihead.config import MultiHeadTaskConfig
from prism.tasks.multihead.labels import unknown_labels

CFG = MultiHeadTaskConfig.model_validate({"heads": [{"name": "presence", "classes": ["yes", "no", "peut-être"]}]})
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=200,
                suppress_health_check=[HealthCheck.too_slow])


def check(df):
    return unknown_labels(CFG, df)


ASCII = "abcXYZ019 _-.,;'\"()[]#%&+="
CHARSETS = [ASCII, ASCII + "éüßçøåñ", ASCII + "éü日本語Ωж🙂"]  # ASCII, Latin-1, beyond Latin-1


def file_names(chars: str) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(list(chars)), min_size=1, max_size=10).map(str.strip).filter(
        lambda s: s not in ("", ".", "..")).map(lambda s: s + ".png")


folder = st.sampled_from(["", "img/", "with space/", "données/", "a b/c,d/"])


@dataclass
class Row:
    image: str  # as written in the CSV
    file: str | None  # the file it names, relative to the CSV's folder; None: missing on disk
    label: str
    extra: bool = False  # one field more than the header


@st.composite
def tables(draw) -> list[Row]:
    chars = draw(st.sampled_from(CHARSETS))
    names = draw(st.lists(st.tuples(folder, file_names(chars)).map("".join), min_size=1, max_size=6, unique=True))
    rows = []
    for rel in names:
        kind = draw(st.sampled_from(["ok"] * 12 + ["missing", "bad_label", "extra"]))
        label = draw(st.sampled_from(["yes", "no", "peut-être", "", "na"]))
        absolute = draw(st.booleans())
        image = f"@ROOT@/{rel}" if absolute else rel
        rows.append(Row(image, None if kind == "missing" else rel,
                        "maybe?" if kind == "bad_label" else label, extra=kind == "extra"))
    return rows


def render(rows: list[Row], root: Path, quoting: int, newline: str, blank_lines: bool) -> tuple[str, list[int]]:
    """The CSV text and the line each record starts on (header = line 1)."""
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=quoting, lineterminator=newline)
    writer.writerow(["image", "presence"])
    starts = []
    for row in rows:
        if blank_lines:
            buf.write(newline)
        starts.append(buf.getvalue().count("\n") + 1)
        fields = [row.image.replace("@ROOT@", str(root)), row.label] + (["surplus"] if row.extra else [])
        writer.writerow(fields)
    return buf.getvalue(), starts


def expected_failures(rows: list[Row], starts: list[int]) -> dict[int, str]:
    """Line → what must be said about it."""
    out = {}
    for row, line in zip(rows, starts, strict=True):
        if row.extra:
            out[line] = "3 fields"
        elif row.file is None:
            out[line] = "file not found"
        elif row.label == "maybe?":
            out[line] = "is not one of"
    return out


@FUZZ
@given(rows=tables(), quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
       newline=st.sampled_from(["\n", "\r\n"]), blank_lines=st.booleans(),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "latin-1"]))
def test_label_csvs_give_their_rows_or_name_the_bad_ones(rows, quoting, newline, blank_lines, encoding):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for row in rows:
            if row.file is not None:
                (root / row.file).parent.mkdir(parents=True, exist_ok=True)
                (root / row.file).write_bytes(b"\x89PNG")
        text, starts = render(rows, root, quoting, newline, blank_lines)
        try:
            data = text.encode(encoding)
        except UnicodeEncodeError:  # Latin-1 cannot hold these names
            data = text.encode("utf-8")
            encoding = "utf-8"
        csv_path = root / "labels.csv"
        csv_path.write_bytes(data)
        try:
            table = read_label_table(csv_path, "image", ["presence"], check)
        except BadRowsError as exc:
            message = str(exc)
            if encoding == "latin-1" and not text.isascii():
                event("refused: not UTF-8")
                assert "not UTF-8" in message and str(csv_path) in message, message
                line = text.encode("utf-8").decode("utf-8")  # the first line holding a non-ASCII character
                first = next(i for i, ln in enumerate(line.splitlines(), 1) if not ln.isascii())
                assert f"line {first}" in message, message
                return
            failures = expected_failures(rows, starts)
            event("refused: bad rows named")
            assert failures, message
            listed = dict(re.findall(r"^  line (\d+): .*?(file not found|is not one of|3 fields)", message, re.M))
            assert {int(k): v for k, v in listed.items()} == dict(list(failures.items())[:10]), message
            return
        assert not (encoding == "latin-1" and not text.isascii()), "a Latin-1 file was read as UTF-8"
        assert not expected_failures(rows, starts)
        event(f"read: {encoding}, {'blank lines' if blank_lines else 'no blank lines'}")
        assert table.rows["line"].tolist() == starts
        assert table.rows["presence"].tolist() == [r.label for r in rows]
        for path, row in zip(table.rows["path"], rows, strict=True):
            assert Path(path) == (root / row.file).resolve() and Path(path).is_file()


def write(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    (tmp_path / "ça va.png").write_bytes(b"\x89PNG")
    p = tmp_path / "labels.csv"
    p.write_bytes(text.encode(encoding))
    return p


@pytest.mark.parametrize(("text", "lines"), [
    ("image,presence\n\nça va.png,yes\n", [3]),                       # a blank line before the row
    ('image,presence\n"ça va.png","peut-\nêtre"\nça va.png,no\n', None),  # a quoted line break: next row on line 4
])
def test_rows_are_numbered_by_the_line_they_start_on(tmp_path, text, lines):
    p = write(tmp_path, text)
    if lines is None:
        with pytest.raises(BadRowsError, match=r"line 2: ça va.png: presence='peut-\\nêtre' is not one of"):
            read_label_table(p, "image", ["presence"], check)
        return
    assert read_label_table(p, "image", ["presence"], check).rows["line"].tolist() == lines


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    p = write(tmp_path, "image,presence\r\nça va.png,yes\r\n", "utf-8-sig")
    table = read_label_table(p, "image", ["presence"], check)
    assert table.rows["path"].tolist() == [str((tmp_path / "ça va.png").resolve())]


def test_a_latin1_file_is_refused_naming_the_line(tmp_path):
    p = write(tmp_path, "image,presence\nça va.png,yes\n", "latin-1")
    with pytest.raises(BadRowsError, match=r"labels.csv is not UTF-8 \(line 2.*save it as UTF-8"):
        read_label_table(p, "image", ["presence"], check)


def test_a_row_with_a_field_too_many_is_named(tmp_path):
    p = write(tmp_path, "image,presence\nça va.png,yes\nça va.png,no,extra\n")
    with pytest.raises(BadRowsError, match=r"line 3: ça va.png: 3 fields, the header has 2"):
        read_label_table(p, "image", ["presence"], check)


def test_a_path_no_file_system_can_hold_is_named(tmp_path):
    p = write(tmp_path, "image,presence\nça va.png,yes\nbad\x00name.png,no\n")
    with pytest.raises(BadRowsError, match=r"line 3: bad.name.png: not a valid path \(embedded null byte\)"):
        read_label_table(p, "image", ["presence"], check)
