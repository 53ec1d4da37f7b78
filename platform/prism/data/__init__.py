"""Data: labels tables, Ray Data pipelines that decode and augment images, synthetic generators.

Names are imported lazily so that Ray Data worker processes that only decode images do not pay for
importing torch, sklearn or Ray itself.
"""

from __future__ import annotations

import importlib

__all__ = [
    "BadRowsError",
    "DecodeImages",
    "LabelTable",
    "Split",
    "TrainData",
    "build_datasets",
    "check_decodable",
    "decode_image",
    "read_bytes",
    "read_label_table",
    "resize_rgb",
    "resolve_image_root",
    "resolve_labels_csv",
    "split_fingerprint",
    "split_labels",
    "split_table",
]

_HOME = {
    "TrainData": "datasets", "build_datasets": "datasets", "resolve_labels_csv": "datasets",
    "split_table": "datasets", "Split": "datasets", "split_labels": "datasets",
    "split_fingerprint": "datasets", "resolve_image_root": "datasets", "DecodeImages": "images", "check_decodable": "images",
    "decode_image": "images", "read_bytes": "images", "resize_rgb": "images", "BadRowsError": "table",
    "LabelTable": "table", "read_label_table": "table",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"prism.data.{_HOME[name]}"), name)
    raise AttributeError(f"module 'prism.data' has no attribute '{name}'")
