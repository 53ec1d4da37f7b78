"""Small test images: PNG bytes, noisy ellipses on disk, and a crafted decompression bomb."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["bomb_png", "png", "sample_images"]


def png(size: tuple[int, int] = (20, 10), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A plain ``size = (width, height)`` RGB PNG as bytes."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def sample_images(folder: Path, n: int = 4, seed: int = 0) -> list[Path]:
    """``n`` small PNGs (ellipses on noise, sizes 60-100 px) in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        size = int(rng.integers(60, 100))
        img = Image.fromarray(rng.integers(180, 255, (size, size, 3), dtype=np.uint8))
        box = sorted(rng.integers(5, size - 5, 2).tolist()) + sorted(rng.integers(5, size - 5, 2).tolist())
        ImageDraw.Draw(img).ellipse([box[0], box[2], box[1] + 1, box[3] + 1], outline=(0, 0, 0), width=3)
        paths.append(folder / f"img_{i}.png")
        img.save(paths[-1])
    return paths


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header (IHDR) claiming ``width x height`` RGB pixels, with no pixel data at all.

    Decoding it fails (truncated), so a 413 proves the size was read from the header and nothing decoded.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
