"""Image decoding and augmentation inside Ray Data ``map_batches`` (CPU), output ``uint8 (B, S, S, 3)``."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

__all__ = ["DecodeImages", "check_decodable", "crop_draft_side", "decode_image", "read_bytes", "resize_rgb"]


def read_bytes(path: str) -> bytes:
    """Bytes of a local path or a URI that pyarrow understands (``s3://``, ``gs://``, ``hdfs://``)."""
    if "://" in path:
        import pyarrow.fs as pafs

        fs, inner = pafs.FileSystem.from_uri(path)
        with fs.open_input_stream(inner) as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def decode_image(data: bytes, source: str = "<bytes>", min_side: int | None = None) -> Image.Image:
    """Fully decode ``data`` to an RGB PIL image; a :class:`ValueError` names ``source`` on failure.

    ``min_side`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale in libjpeg (``Image.draft``) as long as both
    sides stay ``>= min_side``: a few times faster for large photos, pixels close to but not equal to a full
    decode. ``None`` (what prediction and validation use) always decodes at full resolution.
    """
    try:
        img = Image.open(io.BytesIO(data))
        if min_side is not None:
            img.draft("RGB", (min_side, min_side))
        img.load()
    except Exception as e:  # PIL raises several types for corrupt data
        raise ValueError(f"cannot decode image {source}: {type(e).__name__}: {e}") from None
    return img if img.mode == "RGB" else img.convert("RGB")  # convert() of an RGB image is a full copy


def resize_rgb(img: Image.Image, size: int) -> np.ndarray:
    """RGB PIL image → ``uint8 (size, size, 3)`` (bicubic): the eval/predict preprocessing."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
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


class DecodeImages:
    """``map_batches`` callable: ``path`` column → ``image`` uint8 ``(B, size, size, 3)``.

    ``train=False`` is the eval/predict preprocessing: full-resolution decode, then :func:`resize_rgb` — the
    same pixels :class:`prism.predictor.Predictor` sees. ``train=True`` applies the configured augmentation
    (random resized crop, flips, 90° rotations, brightness) to an image that JPEGs may decode at a reduced
    scale (:func:`crop_draft_side`) since the crop is resized anyway. Other columns pass through.
    """

    def __init__(self, size: int, train: bool = False, hflip: bool = True, vflip: bool = False,
                 rot90: bool = False, crop_scale: tuple[float, float] = (0.8, 1.0), brightness: float = 0.0):
        self.size = size
        self.train = train
        self.rot90 = rot90
        self.augment = None  # eval never builds it, so eval tasks do not import torch/torchvision
        self.draft_side: int | None = None
        if train:
            from torchvision.transforms import v2  # imported in the Ray Data worker, not by importers

            crop = v2.RandomResizedCrop(size, scale=tuple(crop_scale), antialias=True)
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

    def _augment(self, img: Image.Image) -> np.ndarray:
        import torch

        t = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
        t = self.augment(t)
        if self.rot90:
            t = torch.rot90(t, int(torch.randint(0, 4, ())), dims=(1, 2))
        return t.permute(1, 2, 0).numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: v for k, v in batch.items() if k != "path"}
        paths = batch["path"]
        images = np.empty((len(paths), self.size, self.size, 3), dtype=np.uint8)
        for i, p in enumerate(paths):
            img = self.decode(str(p))
            images[i] = resize_rgb(img, self.size) if self.augment is None else self._augment(img)
        out["image"] = images
        return out
