"""Request bytes → decoded RGB images, refusing what would hurt a replica before decoding it.

``open_checked`` reads only the image header first (``PIL.Image.open`` is lazy) and refuses an image whose
width x height is over the configured pixel limit with 413, so a decompression bomb (a small file that
claims a huge canvas) is never decoded. Everything PIL cannot read is a 400 naming the image. The decoded
image goes through :func:`prism.data.images.decode_image`, the same function ``prism predict`` uses, so
served and local predictions see identical pixels.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image, UnidentifiedImageError

from prism.data.images import decode_image
from prism.serve.errors import RequestError

__all__ = ["decode_base64", "image_size", "open_checked"]

_DATA_URL_MARK = ";base64,"
_BUFFER = re.compile(r" <_io\.BytesIO object at 0x[0-9a-f]+>")


def decode_base64(text: str, name: str) -> bytes:
    """Base64 text (or a ``data:image/...;base64,`` URL) → bytes; 400 ``undecodable_image`` if invalid."""
    if _DATA_URL_MARK in text[:100]:
        text = text.split(_DATA_URL_MARK, 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(
            400, "undecodable_image", f"{name}: not valid base64 ({exc}); send base64 of the image file's bytes"
        ) from None


def image_size(data: bytes, name: str) -> tuple[int, int]:
    """``(width, height)`` from the header alone; 400 if PIL does not recognise the bytes, 413 for a bomb."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Image.DecompressionBombError as exc:  # PIL's own, much larger, limit
        raise RequestError(413, "image_too_large", f"{name}: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        said = _BUFFER.sub("", str(exc))  # PIL names the in-memory buffer, not the file
        raise RequestError(
            400, "undecodable_image", f"{name}: not an image PIL can read ({type(exc).__name__}: {said})"
        ) from None


def open_checked(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Image file bytes → fully decoded RGB image, or a :class:`RequestError`.

    Args:
        data: the bytes of one image file (PNG, JPEG, WebP, ...).
        name: how errors name the image (file name or ``images[i]``).
        max_pixels: largest ``width * height`` accepted; checked on the header before decoding.

    Raises:
        RequestError: 400 ``undecodable_image`` (empty, unknown format, corrupt data),
            413 ``image_too_large`` (over ``max_pixels``).
    """
    if not data:
        raise RequestError(400, "undecodable_image", f"{name}: empty file (0 bytes)")
    width, height = image_size(data, name)
    if width * height > max_pixels:
        raise RequestError(
            413, "image_too_large",
            f"{name}: {width}x{height} = {width * height} pixels is over max_image_pixels={max_pixels}; "
            "downscale the image before sending it",
        )
    try:
        return decode_image(data, name)
    except ValueError as exc:
        raise RequestError(400, "undecodable_image", str(exc)) from None
