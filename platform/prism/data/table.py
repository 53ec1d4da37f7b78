"""Labels CSV → validated table of absolute image paths and labels, with every bad row named.

Relative image paths are resolved against ``image_root`` (``data.root``) when it is given, else against the
CSV's folder, so the labels CSV can live apart from the images. Checks, in order: the CSV exists and has the
image column and one column per head; each listed image file exists (a missing one is reported with the full
path tried); each label is a known class (empty or ``na`` = missing). With ``on_bad_rows: error`` the first
problems are reported together (row number as in the CSV, counting the header as line 1, and the file);
with ``skip`` those rows are dropped and returned as a table of what was dropped and why.
"""

from __future__ import annotations

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


def read_label_table(csv_path: Path, image_column: str, label_columns: list[str], unknown_labels,
                     on_bad_rows: str = "error", image_root: Path | None = None) -> LabelTable:
    """Read and check ``csv_path``; relative image paths are under ``image_root``, default the CSV's folder.

    ``unknown_labels(df) -> Series[str]`` is the task's per-row check of label values ('' = fine).
    ``image_root`` is ``data.root`` when the config sets it; relative roots are taken from the working folder.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"labels CSV not found: {csv_path} (set data.root or data.labels)")
    df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing = [c for c in [image_column, *label_columns] if c not in df.columns]
    if missing:
        raise BadRowsError(
            f"{csv_path} lacks column(s) {missing}; it has {list(df.columns)}. Expected '{image_column}' "
            f"and one column per head {label_columns} (empty cell = label missing)."
        )
    if df.empty:
        raise BadRowsError(f"{csv_path} has a header but no rows")
    root = Path(image_root if image_root is not None else csv_path.parent).resolve()
    df = df[[image_column, *label_columns]].rename(columns={image_column: "image"})
    df.insert(0, "line", df.index + 2)
    # URIs (s3://bucket/key, gs://…) and absolute paths as they are; relative paths under root
    df["path"] = [p if is_uri(p) or Path(p).is_absolute() else str((root / p).resolve()) for p in df["image"]]
    table = LabelTable(df.reset_index(drop=True))

    reasons = pd.Series([""] * len(df), index=df.index, dtype=object)
    empty = df["image"].str.strip() == ""
    reasons[empty] += "empty image path; "
    exists = pd.Series(files_exist(list(df["path"])), index=df.index)
    missing_file = ~exists & ~empty
    reasons[missing_file] += "file not found: " + df.loc[missing_file, "path"] + "; "
    reasons += unknown_labels(df)
    bad = pd.DataFrame({"path": df["path"], "reason": reasons.str.rstrip("; ")})[reasons != ""]
    hint = ""
    if missing_file.any():
        where = "data.root" if image_root is not None else "the CSV's folder; set data.root if the images are elsewhere"
        hint = f"Relative image paths are resolved against {root} ({where})."
    return raise_or_skip(table, bad, on_bad_rows, str(csv_path), hint)
