"""Labels CSV → validated table of absolute image paths and labels, with every bad row named.

Relative image paths are resolved against ``image_root`` (``data.root``) when it is given, else against the
CSV's folder, so the labels CSV can live apart from the images. The CSV is UTF-8 (a byte-order mark is
fine); rows are numbered by the line their record starts on, blank lines and quoted line breaks counted.
Checks, in order: the CSV exists and has the image column and one column per head; each listed image file exists (a missing one is reported with the full
path tried); each label is a known class (empty or ``na`` = missing). With ``on_bad_rows: error`` the first
problems are reported together (row number as in the CSV, counting the header as line 1, and the file);
with ``skip`` those rows are dropped and returned as a table of what was dropped and why.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from prism.data.uris import files_exist, is_uri

__all__ = ["BadRowsError", "LabelTable", "read_label_table"]

log = logging.getLogger(__name__)
MAX_LISTED = 10


class BadRowsError(ValueError):
    """Rows of the labels CSV that cannot be used; the message names each file and CSV line."""


@dataclass
class LabelTable:
    """``rows``: one per usable image, column ``path`` (absolute) + one column per head.
    ``skipped``: dropped rows with columns ``line``, ``image``, ``reason``."""

    rows: pd.DataFrame
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["line", "image", "reason"]))

    def drop(self, bad: pd.DataFrame) -> LabelTable:
        """A table without the rows whose ``path`` is in ``bad`` (columns ``path``, ``reason``)."""
        keep = ~self.rows["path"].isin(set(bad["path"]))
        extra = self.rows.loc[~keep, ["line", "image", "path"]].merge(bad, on="path")[["line", "image", "reason"]]
        return LabelTable(self.rows.loc[keep].reset_index(drop=True),
                          pd.concat([self.skipped, extra], ignore_index=True))


def raise_or_skip(table: LabelTable, bad: pd.DataFrame, on_bad_rows: str, source: str, hint: str = ""
                  ) -> LabelTable:
    """``bad`` has ``path`` and ``reason``: raise :class:`BadRowsError` (``hint`` appended) or drop those rows."""
    if bad.empty:
        return table
    if on_bad_rows == "error":
        merged = table.rows[["line", "image", "path"]].merge(bad, on="path")
        listed = [f"  line {r.line}: {r.image}: {r.reason}" for r in merged.head(MAX_LISTED).itertuples()]
        more = f"\n  … and {len(merged) - MAX_LISTED} more" if len(merged) > MAX_LISTED else ""
        raise BadRowsError(
            f"{len(merged)} bad row(s) in {source}:\n" + "\n".join(listed) + more + (f"\n{hint}" if hint else "")
            + "\nFix them, or set data.on_bad_rows=skip to drop such rows (they are counted and logged)."
        )
    out = table.drop(bad)
    log.warning("skipped %d bad row(s) of %s", len(bad), source)
    return out


def _decode(csv_path: Path) -> str:
    """The CSV's text (UTF-8, a byte-order mark dropped); :class:`BadRowsError` naming the line otherwise."""
    data = csv_path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise BadRowsError(
            f"{csv_path} is not UTF-8 (line {line} holds the byte 0x{data[e.start]:02x}, e.g. a Latin-1 or Windows "
            "accented letter); save it as UTF-8 (a spreadsheet's 'CSV UTF-8') so that image paths and labels read "
            "as written"
        ) from None


def _records(csv_path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, records and the line each record starts on (the header is line 1; blank lines are skipped,
    a quoted field may span lines)."""
    reader = csv.reader(io.StringIO(_decode(csv_path), newline=""))
    try:
        header = next(reader, [])
        records, lines = [], []
        while True:
            start = reader.line_num + 1
            record = next(reader, None)
            if record is None:
                return header, records, lines
            if record:
                records.append(record)
                lines.append(start)
    except csv.Error as e:  # e.g. a NUL byte, or a quote left open at the end
        raise BadRowsError(f"{csv_path}, line {reader.line_num}: not a readable CSV ({e})") from None


def _resolve(image: str, root: Path) -> tuple[str, str]:
    """``(path, reason)``: URIs and absolute paths as written, relative ones under ``root``."""
    try:
        return (image if is_uri(image) or Path(image).is_absolute() else str((root / image).resolve())), ""
    except (OSError, ValueError) as e:  # a NUL character, a path too long for the OS
        return image, f"not a valid path ({e})"


def read_label_table(csv_path: Path, image_column: str, label_columns: list[str], unknown_labels,
                     on_bad_rows: str = "error", image_root: Path | None = None) -> LabelTable:
    """Read and check ``csv_path``; relative image paths are under ``image_root``, default the CSV's folder.

    The CSV is UTF-8 (with or without a byte-order mark) in the ``csv`` module's dialect (quotes doubled,
    quoted fields may hold commas and line breaks); each row's ``line`` is the line its record starts on.
    A row with more fields than the header is a bad row; missing trailing fields are empty.
    ``unknown_labels(df) -> Series[str]`` is the task's per-row check of label values ('' = fine).
    ``image_root`` is ``data.root`` when the config sets it; relative roots are taken from the working folder.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"labels CSV not found: {csv_path} (set data.root or data.labels)")
    header, records, lines = _records(csv_path)
    wanted = [image_column, *label_columns]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise BadRowsError(
            f"{csv_path} lacks column(s) {missing}; it has {header}. Expected '{image_column}' "
            f"and one column per head {label_columns} (empty cell = label missing)."
        )
    twice = [c for c in wanted if header.count(c) > 1]
    if twice:
        raise BadRowsError(f"{csv_path}: column(s) {twice} appear more than once in the header {header}")
    if not records:
        raise BadRowsError(f"{csv_path} has a header but no rows")
    root = Path(image_root if image_root is not None else csv_path.parent).resolve()
    at = [header.index(c) for c in wanted]
    cells = [[r[i] if i < len(r) else "" for i in at] for r in records]
    df = pd.DataFrame(cells, columns=["image", *label_columns], dtype=str)
    df.insert(0, "line", lines)
    resolved = [_resolve(image, root) for image in df["image"]]
    df["path"] = [path for path, _ in resolved]
    table = LabelTable(df.reset_index(drop=True))

    reasons = pd.Series([why + "; " if why else "" for _, why in resolved], index=df.index, dtype=object)
    surplus = pd.Series([len(r) > len(header) for r in records], index=df.index)
    reasons[surplus] += [f"{len(r)} fields, the header has {len(header)}; " for r in records if len(r) > len(header)]
    empty = df["image"].str.strip() == ""
    reasons[empty] += "empty image path; "
    exists = pd.Series(files_exist(list(df["path"])), index=df.index)
    missing_file = ~exists & ~empty & (reasons == "")
    reasons[missing_file] += [f"file not found: {p}; " for p in df.loc[missing_file, "path"]]
    reasons += unknown_labels(df)
    bad = pd.DataFrame({"path": df["path"], "reason": reasons.str.rstrip("; ")})[reasons != ""]
    hint = ""
    if missing_file.any():
        where = "data.root" if image_root is not None else "the CSV's folder; set data.root if the images are elsewhere"
        hint = f"Relative image paths are resolved against {root} ({where})."
    return raise_or_skip(table, bad, on_bad_rows, str(csv_path), hint)
