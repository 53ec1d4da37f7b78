"""Result values that are not JSON (a mask PNG, an RGB render), and how each door carries them (torch-free)."""

from __future__ import annotations

import base64
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BinaryOutput", "encode_result", "write_binary_outputs"]


@dataclass(frozen=True)
class BinaryOutput:
    """A non-JSON value of a task's result: bytes and their media type. Serve sends it as
    ``{"media_type", "base64"}`` (:func:`encode_result`); ``prism predict`` writes it to a file."""

    data: bytes
    media_type: str = "image/png"


def encode_result(value: Any) -> Any:
    """``value`` (a result, nested dicts / lists) with every :class:`BinaryOutput` as JSON
    ``{"media_type": …, "base64": …}``; everything else unchanged."""
    if isinstance(value, BinaryOutput):
        return {"media_type": value.media_type, "base64": base64.b64encode(value.data).decode("ascii")}
    if isinstance(value, dict):
        return {k: encode_result(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_result(v) for v in value]
    return value


def write_binary_outputs(results: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """``results`` with every :class:`BinaryOutput` written to ``folder/<image>.<key>.<ext>`` and replaced by
    that file's path (what ``prism predict --out`` stores in its JSON / CSV); unchanged when there are none."""
    def walk(value: Any, stem: str) -> Any:
        if isinstance(value, BinaryOutput):
            folder.mkdir(parents=True, exist_ok=True)
            ext = mimetypes.guess_extension(value.media_type) or ".bin"
            path = folder / f"{stem}{ext}"
            path.write_bytes(value.data)
            return str(path)
        if isinstance(value, dict):
            return {k: walk(v, f"{stem}.{k}") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{stem}.{i}") for i, v in enumerate(value)]
        return value

    out = []
    for i, result in enumerate(results):
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(result.get("image", f"image_{i}"))).stem) or f"image_{i}"
        out.append({k: (v if k == "image" else walk(v, f"{i:05d}_{name}.{k}")) for k, v in result.items()})
    return out
