"""Hypothesis strategies of image files: valid ones with the pixels they must decode to, and broken ones.

Every strategy draws an :class:`ImageFile`: the file's bytes plus what a correct decoder makes of them.

- :func:`valid_images`: PNG, JPEG, WebP, GIF, TIFF and BMP of random sizes (1x1 and non-square included) in
  the modes real files come in (``1``, ``L``, ``LA``, ``P`` with and without transparency, ``RGB``,
  ``RGBA``, ``CMYK`` JPEG, 16-bit grey ``I;16``, 16-bit RGB and grey+alpha PNG written by hand, float
  TIFF), animated GIF / WebP / PNG, and PNG / JPEG / WebP carrying an EXIF orientation (1..8).
  ``expected`` is the ``uint8 (H, W, 3)`` image as displayed, computed from the source pixels without PIL's
  conversions: alpha dropped, palettes looked up, 16-bit scaled to 8 bits (``x * 255 / 65535``), CMYK as
  ``(255 - C) (255 - K) / 255``, the first frame of an animation, the EXIF orientation applied. Lossy files
  (JPEG) set ``tolerance``: the mean absolute error a correct decode stays within.
- :func:`broken_images`: a valid file truncated, bit-flipped or overwritten in part, an empty file, random
  bytes, a bare magic number, and tiny files whose header declares a huge (up to 100000 x 100000) or
  zero-sized canvas. ``expected`` is None: nothing is promised but a refusal or an RGB image.
- :func:`image_files` mixes both, :func:`image_bytes` gives only the bytes (for schemathesis).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from PIL import Image

__all__ = ["ImageFile", "broken_images", "huge_header", "image_bytes", "image_files", "orient", "valid_images"]

ORIENTATION = 0x0112  # the EXIF tag
JPEG_TOLERANCE = 4.0
"""Mean absolute error (0..255) a correct decode of the quality-95, 4:4:4 JPEGs here stays within."""


@dataclass(frozen=True)
class ImageFile:
    """An image file and what decoding it must give.

    ``kind``: ``valid`` or how the file was broken. ``size``: ``(width, height)`` as stored (declared, for a
    crafted header). ``expected``: ``uint8 (H, W, 3)`` as displayed (None for broken files). ``tolerance``:
    0 for lossless files, else the mean absolute error allowed against ``expected``.
    """

    data: bytes
    kind: str
    fmt: str
    mode: str
    size: tuple[int, int]
    expected: np.ndarray | None = None
    tolerance: float = 0.0
    frames: int = 1
    orientation: int = 1

    def __repr__(self) -> str:  # what Hypothesis prints for a failing example
        return (f"ImageFile({self.kind} {self.fmt} {self.mode} {self.size[0]}x{self.size[1]}, {len(self.data)} bytes, "
                f"frames={self.frames}, orientation={self.orientation})")


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Stored ``(H, W, C)`` pixels → as displayed under an EXIF ``orientation`` (TIFF 6.0 / EXIF 2.3, tag 274:
    where the stored 0th row and column go), written from the standard, not from PIL."""
    flip = {  # display[i, j] = stored[...]
        1: lambda a: a,
        2: lambda a: a[:, ::-1],                       # mirrored left-right
        3: lambda a: a[::-1, ::-1],                    # rotated 180
        4: lambda a: a[::-1],                          # mirrored top-bottom
        5: lambda a: a.transpose(1, 0, 2),             # transposed: display[i, j] = stored[j, i]
        6: lambda a: np.rot90(a, -1),                  # stored needs 90 degrees clockwise
        7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],  # transversed: display[i, j] = stored[H-1-j, W-1-i]
        8: lambda a: np.rot90(a, 1),                   # stored needs 90 degrees counter-clockwise
    }
    return np.ascontiguousarray(flip[orientation](pixels))


def _grey3(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, axis=2)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png16(samples: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand (PIL writes none with colour): ``samples`` uint16 (H, W, channels)."""
    h, w, _ = samples.shape
    rows = samples.astype(">u2").reshape(h, -1).tobytes()
    stride = len(rows) // h
    raw = b"".join(b"\x00" + rows[i * stride:(i + 1) * stride] for i in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def _blocks(a: np.ndarray) -> np.ndarray:
    """``a`` with each 8x8 block (the JPEG's DCT tile) filled with its top-left value."""
    h, w = a.shape[:2]
    return np.ascontiguousarray(np.repeat(np.repeat(a[::8, ::8], 8, 0), 8, 1)[:h, :w])


def _to8(x: np.ndarray) -> np.ndarray:
    return np.rint(x.astype(np.float64) * 255 / 65535).astype(np.uint8)


def _still(fmt: str, mode: str, w: int, h: int, rng: np.random.Generator) -> tuple[bytes, np.ndarray, float]:
    """One still image: ``(file bytes, expected RGB as stored, tolerance)``."""
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (h, w), dtype=np.uint8)
    alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
    if fmt == "JPEG":  # 8x8 blocks of one colour, which a JPEG at quality 95 keeps close
        rgb, grey = _blocks(rgb), _blocks(grey)
        jpeg = {"quality": 95, "subsampling": 0}
        if mode == "CMYK":
            cmyk = _blocks(rng.integers(0, 256, (h, w, 4), dtype=np.uint8))
            k = 255 - cmyk[..., 3:].astype(np.float64)
            expected = np.rint((255 - cmyk[..., :3]) * k / 255).astype(np.uint8)
            return _save(Image.fromarray(cmyk, "CMYK"), fmt, **jpeg), expected, JPEG_TOLERANCE
        if mode == "L":
            return _save(Image.fromarray(grey), fmt, **jpeg), _grey3(grey), JPEG_TOLERANCE
        return _save(Image.fromarray(rgb), fmt, **jpeg), rgb, JPEG_TOLERANCE
    if mode == "1":
        bits = rng.integers(0, 2, (h, w)).astype(bool)
        return _save(Image.fromarray(bits), fmt), _grey3(bits.astype(np.uint8) * 255), 0.0
    if mode == "L":
        return _save(Image.fromarray(grey), fmt), _grey3(grey), 0.0
    if mode == "LA":
        return _save(Image.fromarray(np.dstack([grey, alpha]), "LA"), fmt), _grey3(grey), 0.0
    if mode in ("P", "PT"):
        palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
        index = rng.integers(0, 256, (h, w), dtype=np.uint8)
        img = Image.fromarray(index, "P")
        img.putpalette(palette.ravel().tolist())
        extra = {"transparency": int(index[0, 0])} if mode == "PT" else {}
        return _save(img, fmt, **extra), palette[index], 0.0
    if mode == "RGBA":
        extra = {"lossless": True, "exact": True} if fmt == "WEBP" else {}
        return _save(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), fmt, **extra), rgb, 0.0
    if mode == "I;16":
        wide = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        return _save(Image.fromarray(wide), fmt), _grey3(_to8(wide)), 0.0
    if mode == "RGB;16":
        wide = rng.integers(0, 65536, (h, w, 3), dtype=np.uint16)
        return _png16(wide, 2), _to8(wide), 1.0
    if mode == "LA;16":
        wide = rng.integers(0, 65536, (h, w, 2), dtype=np.uint16)
        return _png16(wide, 4), _grey3(_to8(wide[..., 0])), 1.0
    if mode == "F":
        unit = rng.random((h, w), dtype=np.float32)
        return _save(Image.fromarray(unit), fmt), _grey3(np.rint(unit.astype(np.float64) * 255).astype(np.uint8)), 0.0
    extra = {"lossless": True} if fmt == "WEBP" else {}
    return _save(Image.fromarray(rgb), fmt, **extra), rgb, 0.0


STILLS = [("PNG", m) for m in ("1", "L", "LA", "P", "PT", "RGB", "RGBA", "I;16", "RGB;16", "LA;16")] + [
    ("JPEG", "L"), ("JPEG", "RGB"), ("JPEG", "CMYK"), ("WEBP", "RGB"), ("WEBP", "RGBA"), ("GIF", "L"), ("GIF", "P"),
    ("TIFF", "I;16"), ("TIFF", "F"), ("TIFF", "RGB"), ("BMP", "RGB"), ("BMP", "P"),
]
"""(format, mode) of the still images; ``PT`` is a palette image with a transparent index."""

sides = st.integers(1, 40)
seeds = st.integers(0, 2**32 - 1)


@st.composite
def stills(draw) -> ImageFile:
    fmt, mode = draw(st.sampled_from(STILLS))
    w, h = draw(sides), draw(sides)
    data, expected, tol = _still(fmt, mode, w, h, np.random.default_rng(draw(seeds)))
    return ImageFile(data, "valid", fmt, mode, (w, h), expected, tol)


@st.composite
def animations(draw) -> ImageFile:
    """2-4 frames of different pixels; a still decoder shows the first."""
    fmt = draw(st.sampled_from(["GIF", "WEBP", "PNG"]))
    w, h, n = draw(sides), draw(sides), draw(st.integers(2, 4))
    rng = np.random.default_rng(draw(seeds))
    if fmt == "GIF":  # grey frames: GIF keeps 256 grey levels exactly
        frames = [rng.integers(0, 256, (h, w), dtype=np.uint8) for _ in range(n)]
        expected = _grey3(frames[0])
    else:
        frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]
        expected = frames[0]
    images = [Image.fromarray(f) for f in frames]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    data = _save(images[0], fmt, save_all=True, append_images=images[1:], duration=50, loop=0, **extra)
    return ImageFile(data, "valid", fmt, images[0].mode, (w, h), expected, 0.0, frames=n)


@st.composite
def exif_oriented(draw) -> ImageFile:
    """An RGB image stored with an EXIF orientation tag: it must decode as displayed (:func:`orient`)."""
    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP"]))
    orientation = draw(st.integers(1, 8))
    w, h = draw(sides), draw(sides)
    data, stored, tol = _still(fmt, "RGB", w, h, np.random.default_rng(draw(seeds)))
    img = Image.open(io.BytesIO(data))
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    extra = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    data = _save(img, fmt, exif=exif.tobytes(), **extra)
    return ImageFile(data, "valid", fmt, "RGB", (w, h), orient(stored, orientation), tol, orientation=orientation)


def valid_images() -> st.SearchStrategy[ImageFile]:
    """Decodable image files with the pixels they must decode to (see the module docstring)."""
    return st.one_of(stills(), animations(), exif_oriented())


def huge_header(fmt: str, width: int, height: int) -> bytes:
    """A tiny file whose header declares a ``width x height`` canvas and holds no pixel data."""
    if fmt == "PNG":
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")
    if fmt == "GIF":  # 16-bit sides
        return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b"\x2c" + struct.pack(
            "<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00\x3b"
    # JPEG: a real 8x8 JPEG with the frame header's sides (16-bit) rewritten
    data = bytearray(_save(Image.new("RGB", (8, 8), (90, 20, 200)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@st.composite
def huge_headers(draw) -> ImageFile:
    fmt = draw(st.sampled_from(["PNG", "GIF", "JPEG"]))
    top = 100_000 if fmt == "PNG" else 65_535
    w, h = draw(st.integers(0, top)), draw(st.integers(0, top))
    return ImageFile(huge_header(fmt, w, h), "huge_header", fmt, "RGB", (w, h))


@st.composite
def damaged(draw) -> ImageFile:
    """A valid file truncated, with bits flipped, or with a run of bytes overwritten."""
    base = draw(valid_images())
    data = bytearray(base.data)
    how = draw(st.sampled_from(["truncated", "bitflip", "overwritten"]))
    if how == "truncated":
        data = data[:draw(st.integers(1, len(data) - 1))]
    elif how == "bitflip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    else:
        start = draw(st.integers(0, len(data) - 1))
        junk = draw(st.binary(min_size=1, max_size=32))
        data[start:start + len(junk)] = junk
    return ImageFile(bytes(data), how, base.fmt, base.mode, base.size, frames=base.frames,
                     orientation=base.orientation)


MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"II*\x00", b"BM"]


def broken_images() -> st.SearchStrategy[ImageFile]:
    """Files no decoder should trust (see the module docstring); ``expected`` is None."""
    junk = st.binary(max_size=64).map(lambda b: ImageFile(b, "empty" if not b else "random", "?", "?", (0, 0)))
    magic = st.tuples(st.sampled_from(MAGICS), st.binary(max_size=48)).map(
        lambda t: ImageFile(t[0] + t[1], "magic_only", "?", "?", (0, 0)))
    return st.one_of(damaged(), huge_headers(), junk, magic)


def image_files(broken_percent: int = 25) -> st.SearchStrategy[ImageFile]:
    """Valid files, and about ``broken_percent`` % broken ones (Hypothesis draws an index into 100 slots:
    ``st.integers`` would favour its bounds)."""
    slots = [False] * (100 - broken_percent) + [True] * broken_percent
    return st.sampled_from(slots).flatmap(lambda broken: broken_images() if broken else valid_images())


def image_bytes(broken_percent: int = 25) -> st.SearchStrategy[bytes]:
    """The bytes of :func:`image_files` (a schemathesis ``format`` strategy)."""
    return image_files(broken_percent).map(lambda f: f.data)
