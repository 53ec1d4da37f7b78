"""Image decoding and augmentation inside Ray Data ``map_batches`` (CPU), output ``uint8 (B, S, S, 3)``.

Arrays handed in by callers (the predictor, Serve) become ``uint8`` by one rule, :func:`array_to_uint8`;
PIL images that are not 8-bit (16-bit PNG/TIFF, float ``F`` or 32-bit ``I`` mode) by :func:`to_rgb`.
"""

from __future__ import annotations

import io
import math
import re

import numpy as np
from PIL import Image

__all__ = [
    "DecodeImages",
    "array_to_uint8",
    "check_decodable",
    "crop_draft_side",
    "decode_image",
    "exif_upright",
    "read_bytes",
    "resize_rgb",
    "to_rgb",
]

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
"""PIL modes of 16-bit single-channel images (16-bit PNG and TIFF files decode to these)."""


def read_bytes(path: str) -> bytes:
    """Bytes of a local path or a URI that pyarrow understands (``s3://``, ``gs://``, ``hdfs://``)."""
    from prism.data.uris import is_uri, open_filesystem

    if is_uri(path):
        fs, inner = open_filesystem(path)
        with fs.open_input_stream(inner) as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def decode_image(data: bytes, source: str = "<bytes>", min_side: int | None = None,
                 upright: bool = True) -> Image.Image:
    """Fully decode ``data`` to an RGB PIL image as viewers show it; a :class:`ValueError` names ``source``
    on failure.

    An EXIF orientation (phone photos; JPEG, PNG, WebP, TIFF) is applied (:func:`exif_upright`; ``upright=
    False`` keeps the stored pixels, for annotations made in stored coordinates), an animation gives its
    first frame, and :func:`to_rgb` makes it RGB (alpha and palette transparency dropped, 16-bit scaled to
    8 bits).

    ``min_side`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale in libjpeg (``Image.draft``) as long as both
    sides stay ``>= min_side``: a few times faster for large photos, pixels close to but not equal to a full
    decode. ``None`` (what prediction and validation use) always decodes at full resolution.
    """
    try:
        img = Image.open(io.BytesIO(data))
        if min_side is not None:
            img.draft("RGB", (min_side, min_side))
        img.load()
        if upright:
            img = exif_upright(img)
    except Exception as e:  # PIL raises several types for corrupt data
        said = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e))  # PIL names the buffer, not the file
        raise ValueError(f"cannot decode image {source}: {type(e).__name__}: {said}") from None
    return to_rgb(img, source)


EXIF_ORIENTATION = 0x0112
"""The EXIF tag (274) saying how the stored pixels are turned for display."""


def exif_upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation says (values 2..8, PIL's ``exif_transpose``), else ``img``
    itself: no copy of the many images without an orientation."""
    if img.getexif().get(EXIF_ORIENTATION, 1) not in range(2, 9):
        return img
    from PIL import ImageOps

    return ImageOps.exif_transpose(img)


def array_to_uint8(image: np.ndarray, name: str = "<image>") -> np.ndarray:
    """An ``(H, W, C)`` image array → ``uint8 (H, W, C)``, or a ``ValueError`` naming ``name``, dtype and range.

    The rule, by dtype:

    - ``uint8``: as is (0..255).
    - floating point: values in ``[0, 1]`` are scaled by 255 and rounded. Anything else (e.g. 0..255 floats,
      negative or non-finite values) is refused: a float image is read as ``[0, 1]`` and nothing is guessed.
    - other integers (``uint16``, ``int64``, …): taken as 8-bit values when all lie in 0..255 (an exact
      cast), refused otherwise (e.g. a 16-bit image: scale it to 0..255 first).
    - anything else (``bool``, complex, object): refused.
    """
    fix = "pass uint8 values 0..255 or floats in [0, 1]"
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_ or not (np.issubdtype(image.dtype, np.floating)
                                       or np.issubdtype(image.dtype, np.integer)):
        raise ValueError(f"{name}: image arrays of dtype {image.dtype} are not supported; {fix}")
    if image.size == 0:
        raise ValueError(f"{name}: empty image array of shape {image.shape}")
    lo, hi = image.min(), image.max()
    if np.issubdtype(image.dtype, np.floating):
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0 and hi <= 1):
            raise ValueError(
                f"{name}: float images must lie in [0, 1], got dtype {image.dtype} with range [{lo}, {hi}]; "
                f"divide 0..255 values by 255, or {fix}"
            )
        return np.rint(image.astype(np.float64) * 255).astype(np.uint8)
    if lo < 0 or hi > 255:
        raise ValueError(
            f"{name}: integer images of dtype {image.dtype} must lie in 0..255, got range [{lo}, {hi}]; "
            f"scale them to 0..255 (e.g. a 16-bit image: x // 257), or {fix}"
        )
    return image.astype(np.uint8)


def to_rgb(img: Image.Image, source: str = "<image>") -> Image.Image:
    """A PIL image in RGB mode (the same object when it already is one; ``convert()`` would copy it).

    PIL's own ``convert("RGB")`` clips wider pixel types to 0..255, which turns a 16-bit image nearly white
    and a float image in ``[0, 1]`` black. Here 16-bit modes (:data:`SIXTEEN_BIT_MODES`) are scaled to
    8 bits (``x * 255 / 65535``, rounded), and ``F`` (float) and ``I`` (int32) images follow
    :func:`array_to_uint8` (floats in ``[0, 1]`` scaled by 255, integers within 0..255 cast, else
    ``ValueError``). Other modes (``L``, ``P``, ``RGBA``, ``CMYK``, …) use ``convert("RGB")``.
    """
    if img.mode == "RGB":
        return img
    if img.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(img, dtype=np.uint32)
        img = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
    elif img.mode in ("F", "I"):
        img = Image.fromarray(array_to_uint8(np.asarray(img), source))
    return img.convert("RGB")


def resize_rgb(img: Image.Image, size: int) -> np.ndarray:
    """PIL image → ``uint8 (size, size, 3)`` (:func:`to_rgb`, then bicubic): the eval/predict preprocessing."""
    rgb = to_rgb(img)
    return np.asarray(rgb.resize((size, size), Image.BICUBIC), dtype=np.uint8)


def crop_draft_side(size: int, crop_scale: tuple[float, float], ratio: tuple[float, float]) -> int:
    """Smallest image side that keeps every ``RandomResizedCrop(size, crop_scale, ratio)`` crop ``>= size``.

    A crop covers an area fraction ``s >= crop_scale[0]`` of a ``W x H`` image with aspect ``r`` in ``ratio``,
    so its sides are ``sqrt(W H s r)`` and ``sqrt(W H s / r)``, both ``>= min(W, H) sqrt(s_min r_min)``
    where ``r_min = min(ratio[0], 1 / ratio[1])``: decoding at a reduced scale down to this side never
    makes the crop smaller than the output, so the crop is still downsampled, never upsampled.
    """
    r_min = min(ratio[0], 1.0 / ratio[1], 1.0)
    return math.ceil(size / math.sqrt(max(crop_scale[0], 1e-6) * r_min))


def check_decodable(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``map_batches`` fn: ``{"path"}`` → ``{"path", "reason"}`` of the rows that do NOT decode."""
    reasons = []
    for p in batch["path"]:
        try:
            decode_image(read_bytes(str(p)), str(p))
            reasons.append("")
        except ValueError as e:
            reasons.append(str(e).split(": ", 1)[-1])
        except OSError as e:
            reasons.append(f"cannot read: {e}")
    bad = np.array([bool(r) for r in reasons], dtype=bool)
    return {"path": np.asarray(batch["path"])[bad], "reason": np.array(reasons, dtype=object)[bad]}


AUG_SEED_COLUMN = "aug_seed"
"""Per-row augmentation seed in [0, 1), added by the training dataset (see :class:`DecodeImages`)."""


class DecodeImages:
    """``map_batches`` callable: ``path`` column → ``image`` uint8 ``(B, size, size, 3)``.

    ``train=False`` is the eval/predict preprocessing: full-resolution decode, then :func:`resize_rgb` — the
    same pixels :class:`prism.inference.predictor.Predictor` sees. ``train=True`` applies the configured augmentation
    (random resized crop, flips, 90° rotations, brightness) to an image that JPEGs may decode at a reduced
    scale (:func:`crop_draft_side`) since the crop is resized anyway. Other columns pass through.

    Reproducible augmentation: when the batch has a float column ``aug_seed`` (one value in [0, 1) per row,
    see :data:`AUG_SEED_COLUMN`), each row's random draws come from its own generator seeded by that value
    instead of the process's global RNG, so the same seeds give the same pixels whichever worker or batch
    the row lands in. The column is consumed (not passed on).
    """

    def __init__(self, size: int, train: bool = False, hflip: bool = True, vflip: bool = False,
                 rot90: bool = False, crop_scale: tuple[float, float] = (0.8, 1.0), brightness: float = 0.0,
                 crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        self.size = size
        self.train = train
        self.rot90 = rot90
        self.augment = None  # eval never builds it, so eval tasks do not import torch/torchvision
        self.draft_side: int | None = None
        if train:
            from torchvision.transforms import v2  # imported in the Ray Data worker, not by importers

            crop = v2.RandomResizedCrop(size, scale=tuple(crop_scale), ratio=tuple(crop_ratio), antialias=True)
            ops: list = [crop]
            if hflip:
                ops.append(v2.RandomHorizontalFlip())
            if vflip:
                ops.append(v2.RandomVerticalFlip())
            if brightness > 0:
                ops.append(v2.ColorJitter(brightness=brightness))
            self.augment = v2.Compose(ops)
            self.draft_side = crop_draft_side(size, crop.scale, crop.ratio)

    def decode(self, path: str) -> Image.Image:
        """The RGB image the crop or resize starts from (reduced-scale JPEG decode for training only)."""
        return decode_image(read_bytes(path), path, min_side=self.draft_side)

    def _augment(self, img: Image.Image, seed: float | None = None) -> np.ndarray:
        import torch

        t = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:  # torchvision's v2 transforms draw from the global torch RNG
                # The CPU generator alone (the one fork_rng restores), in ~5 us: torch.manual_seed also queues
                # seeds for uninitialised accelerators with a recorded stack, ~0.7 ms per row in a Ray task.
                torch.default_generator.manual_seed(int(seed * 2**32))  # a 32-bit Mersenne Twister seed
            t = self.augment(t)
            if self.rot90:
                t = torch.rot90(t, int(torch.randint(0, 4, ())), dims=(1, 2))
        return t.permute(1, 2, 0).numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: v for k, v in batch.items() if k not in ("path", AUG_SEED_COLUMN)}
        paths = batch["path"]
        seeds = batch.get(AUG_SEED_COLUMN)
        images = np.empty((len(paths), self.size, self.size, 3), dtype=np.uint8)
        for i, p in enumerate(paths):
            images[i] = self.transform(self.decode(str(p)), None if seeds is None else float(seeds[i]))
        out["image"] = images
        return out

    def transform(self, img: Image.Image, seed: float | None = None) -> np.ndarray:
        """A decoded image → ``uint8 (size, size, 3)``: resized (eval) or augmented (train, by ``seed``)."""
        return resize_rgb(img, self.size) if self.augment is None else self._augment(img, seed)
