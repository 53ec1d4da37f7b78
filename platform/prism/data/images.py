"""Image decoding and augmentation inside Ray Data ``map_batches`` (CPU), output ``uint8 (B, S, S, 3)``."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = ["DecodeImages", "check_decodable", "decode_image", "read_bytes", "resize_rgb"]


def read_bytes(path: str) -> bytes:
    """Bytes of a local path or a URI that pyarrow understands (``s3://``, ``gs://``, ``hdfs://``)."""
    if "://" in path:
        import pyarrow.fs as pafs

        fs, inner = pafs.FileSystem.from_uri(path)
        with fs.open_input_stream(inner) as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def decode_image(data: bytes, source: str = "<bytes>") -> Image.Image:
    """Fully decode ``data`` to an RGB PIL image; a :class:`ValueError` names ``source`` on failure."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises several types for corrupt data
        raise ValueError(f"cannot decode image {source}: {type(e).__name__}: {e}") from None
    return img.convert("RGB")


def resize_rgb(img: Image.Image, size: int) -> np.ndarray:
    """RGB PIL image → ``uint8 (size, size, 3)`` (bicubic): the eval/predict preprocessing."""
    return np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.uint8)


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

    ``train=True`` applies the configured augmentation (random resized crop on the full-resolution image,
    flips, 90° rotations, brightness); otherwise a plain resize. Other columns pass through.
    """

    def __init__(self, size: int, train: bool = False, hflip: bool = True, vflip: bool = False,
                 rot90: bool = False, crop_scale: tuple[float, float] = (0.8, 1.0), brightness: float = 0.0):
        from torchvision.transforms import v2  # imported in the Ray Data worker, not by importers

        self.size = size
        self.train = train
        self.rot90 = rot90
        ops: list = [v2.RandomResizedCrop(size, scale=tuple(crop_scale), antialias=True)]
        if hflip:
            ops.append(v2.RandomHorizontalFlip())
        if vflip:
            ops.append(v2.RandomVerticalFlip())
        if brightness > 0:
            ops.append(v2.ColorJitter(brightness=brightness))
        self.augment = v2.Compose(ops)

    def _one(self, path: str) -> np.ndarray:
        img = decode_image(read_bytes(path), path)
        if not self.train:
            return resize_rgb(img, self.size)
        import torch

        t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        t = self.augment(t)
        if self.rot90:
            t = torch.rot90(t, int(torch.randint(0, 4, ())), dims=(1, 2))
        return t.permute(1, 2, 0).contiguous().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: v for k, v in batch.items() if k != "path"}
        out["image"] = np.stack([self._one(str(p)) for p in batch["path"]])
        return out
