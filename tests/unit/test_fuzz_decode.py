"""Image decoding, fuzzed: every generated file is decoded to the right pixels or refused by name.

Both doors are checked: the served one (``prism.serve.images.open_checked``: header check, then decoding,
refusals as 4xx :class:`RequestError`) and the one training and ``prism predict`` use
(``prism.data.images.decode_image``, refusals as ``ValueError``). The files come from
``tests/helpers/fuzz_images.py``: valid PNG / JPEG / WebP / GIF / TIFF / BMP in every mode (16-bit, CMYK,
palette, alpha, 1-bit), animations and EXIF orientations, whose expected pixels are computed without PIL's
conversions; and truncated, bit-flipped, overwritten, empty and huge-header files.

The rules checked: the image as displayed (EXIF orientation applied, first frame of an animation), alpha
and palette transparency dropped, 16-bit scaled to 8 bits (not clipped to white), CMYK as
``(255 - C) (255 - K) / 255``; served and local decoding give identical pixels; a header over the pixel
limit is a 413 before any decoding.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from prism.data.images import decode_image
from prism.serve import images as served_images
from prism.serve.errors import RequestError
from prism.serve.images import open_checked
from tests.helpers.fuzz_images import ImageFile, broken_images, huge_header, orient, valid_images

MAX_PIXELS = 4096 * 4096
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=300,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
pytestmark = [pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
              pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")]


def assert_pixels(decoded: Image.Image, f: ImageFile) -> None:
    assert decoded.mode == "RGB"
    got = np.asarray(decoded)
    assert got.shape == f.expected.shape, f
    error = np.abs(got.astype(np.int64) - f.expected).mean()
    assert error <= f.tolerance, (f, error)


@FUZZ
@given(f=valid_images())
def test_valid_files_decode_to_the_pixels_they_show(f):
    local = decode_image(f.data, "upload.img")
    assert_pixels(local, f)
    served = open_checked(f.data, "upload.img", MAX_PIXELS)
    np.testing.assert_array_equal(np.asarray(served), np.asarray(local))


def outcome(decode) -> tuple[str, object]:
    """``("image", pixels)`` or ``("refused", the exception)``; any other exception propagates."""
    try:
        img = decode()
    except (ValueError, RequestError) as exc:
        return "refused", exc
    assert img.mode == "RGB" and img.width > 0 and img.height > 0
    return "image", np.asarray(img)


@settings(FUZZ, max_examples=250)
@given(f=broken_images())
def test_broken_files_decode_or_are_refused_by_name(f):
    local = outcome(lambda: decode_image(f.data, "upload.img"))
    served = outcome(lambda: open_checked(f.data, "upload.img", MAX_PIXELS))
    if local[0] == "refused":
        assert "upload.img" in str(local[1])
    if served[0] == "refused":
        exc = served[1]
        assert isinstance(exc, RequestError) and exc.status in (400, 413) and "upload.img" in exc.detail, exc
        assert "BytesIO" not in exc.detail  # names the image, not the buffer PIL read it from
    if served[0] == "image":  # what the server decodes, prism predict decodes alike
        assert local[0] == "image"
        np.testing.assert_array_equal(served[1], local[1])
    elif local[0] == "image":  # refused by the server only for its pixel limit
        assert served[1].status == 413, served[1]


@settings(FUZZ, max_examples=60)
@given(fmt=st.sampled_from(["PNG", "GIF", "JPEG"]), side=st.integers(4097, 65_535), other=st.integers(4097, 65_535))
def test_a_header_over_the_pixel_limit_is_a_413_before_any_decoding(fmt, side, other):
    decoded: list[str] = []
    with pytest.MonkeyPatch.context() as mp:  # what reaches decoding in the served path: nothing may
        mp.setattr(served_images, "decode_image", lambda data, name, *a, **k: decoded.append(name))
        with pytest.raises(RequestError) as info:
            open_checked(huge_header(fmt, side, other), "bomb.img", MAX_PIXELS)
    assert (info.value.status, info.value.error) == (413, "image_too_large")
    assert "bomb.img" in info.value.detail and decoded == []


# --------------------------------------------------------------------------- the rules, one by one


def saved(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_the_image_upright_unless_asked_not_to(orientation):
    stored = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 14  # 3 wide, 2 high, every pixel distinct
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = saved(Image.fromarray(stored), "PNG", exif=exif.tobytes())
    upright = np.asarray(decode_image(data, "photo.png"))
    np.testing.assert_array_equal(upright, orient(stored, orientation))
    assert upright.shape[:2] == ((3, 2) if orientation >= 5 else (2, 3))
    np.testing.assert_array_equal(np.asarray(decode_image(data, "photo.png", upright=False)), stored)
    np.testing.assert_array_equal(np.asarray(open_checked(data, "photo.png", MAX_PIXELS)), upright)


def test_sixteen_bit_grey_is_scaled_to_eight_bits_not_clipped():
    wide = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # 0, 1, 128, 255 in 8 bits
    got = np.asarray(decode_image(saved(Image.fromarray(wide), "PNG"), "scan.png"))
    assert got[0, :, 0].tolist() == [0, 1, 128, 255] and (got == got[..., :1]).all()


def test_alpha_is_dropped_not_composited():
    rgba = np.array([[[200, 10, 10, 0], [10, 200, 10, 128]]], dtype=np.uint8)
    got = np.asarray(decode_image(saved(Image.fromarray(rgba, "RGBA"), "PNG"), "icon.png"))
    assert got.tolist() == [[[200, 10, 10], [10, 200, 10]]]


def test_an_animation_decodes_to_its_first_frame():
    frames = [Image.new("RGB", (3, 2), c) for c in [(255, 0, 0), (0, 255, 0)]]
    data = saved(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert np.asarray(decode_image(data, "anim.webp"))[0, 0].tolist() == [255, 0, 0]
