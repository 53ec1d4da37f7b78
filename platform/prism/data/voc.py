"""The VOC segmentation layout → one row per (image, prompted class), checked before any work starts.

::

    root/JPEGImages/<id>.jpg                    (images=…: another folder)
    root/SegmentationClass/<id>.png             (masks=…: another folder) binary (0 / 255 or 0 / 1) or palette
    root/ImageSets/Segmentation/<split>.txt     ids, one per line (list_file=…: any list; none: every image)

A palette (or ``L``) mask holds class indices; 255 is VOC's "void" border, ignored by the loss and the
metrics. A binary mask (values ⊆ {0, 255} or {0, 1}) is one foreground class, index 1. Each class present in
an image becomes one row, prompted by ``classes[index]`` (e.g. ``{1: "circle"}``), or by the image's own
prompt when ``prompts`` names one (``{id: text}``; its mask's foreground is then every non-zero class).

Rows (a DataFrame): ``id``, ``image`` and ``mask`` (paths), ``class_index`` (int), ``prompt`` (str). Errors
name the id: a missing image or mask, a mask whose size differs from its image, a list naming no image, a
class index without a prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

__all__ = ["IGNORE_INDEX", "VocTable", "read_mask", "read_voc"]

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class VocTable:
    """The rows of a VOC folder and the ids of images that held no prompted class (``empty``)."""

    rows: pd.DataFrame
    empty: list[str]


def read_mask(path: str | Path) -> np.ndarray:
    """A mask PNG → (H, W) uint8 class indices: palette / L as stored (255 = void), binary 0/255 → 0/1."""
    with Image.open(path) as im:
        mode = im.mode
        if mode not in ("P", "L", "1", "I", "I;16"):
            raise ValueError(f"{path}: a mask must be a palette or single-channel PNG, not mode {mode}")
        a = np.asarray(im.convert("L") if mode == "1" else im)
    if a.dtype != np.uint8:
        if a.max() > 255:
            raise ValueError(f"{path}: class indices above 255")
        a = a.astype(np.uint8)
    values = set(np.unique(a).tolist())
    if mode != "P" and values <= {0, 255} and 255 in values:
        a = (a == 255).astype(np.uint8)  # a binary mask drawn as black / white
    return a


def _image_file(folder: Path, image_id: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        p = folder / f"{image_id}{suffix}"
        if p.is_file():
            return p
    return None


def read_voc(root: str | Path, split: str | None = "train", list_file: str | Path | None = None,
             images: str | Path | None = None, masks: str | Path | None = None,
             classes: Mapping[int, str] | None = None, prompts: Mapping[str, str] | None = None) -> VocTable:
    """The rows of the VOC folder ``root`` (see the module docstring).

    ``split``: ``ImageSets/Segmentation/<split>.txt``; ``list_file`` another list; both None (or the split
    file absent with ``split=None``): every image of the image folder. ``classes``: index → prompt text.
    """
    root = Path(root)
    image_dir = Path(images) if images is not None else root / "JPEGImages"
    mask_dir = Path(masks) if masks is not None else root / "SegmentationClass"
    for what, folder in (("image", image_dir), ("mask", mask_dir)):
        if not folder.is_dir():
            raise ValueError(f"{what} folder not found: {folder}")
    if list_file is None and split is not None:
        list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            raise ValueError(f"{list_file} not found: give data.voc.split of an existing list, a list_file, or "
                             "split: null for every image")
    if list_file is not None:
        ids = [line.strip() for line in Path(list_file).read_text().splitlines() if line.strip()]
        where = str(list_file)
    else:
        ids = sorted(p.stem for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        where = str(image_dir)
    if not ids:
        raise ValueError(f"{where} names no image")
    classes = dict(classes or {})
    prompts = dict(prompts or {})
    rows, empty = [], []
    for image_id in ids:
        image = _image_file(image_dir, image_id)
        if image is None:
            raise ValueError(f"image id {image_id}: no image {image_dir / image_id}.* ({', '.join(IMAGE_SUFFIXES)})")
        mask = mask_dir / f"{image_id}.png"
        if not mask.is_file():
            raise ValueError(f"image id {image_id}: its mask {mask} is missing")
        with Image.open(image) as im, Image.open(mask) as m:
            if im.size != m.size:
                raise ValueError(f"image id {image_id}: the mask is {m.size[0]}x{m.size[1]} but the image is "
                                 f"{im.size[0]}x{im.size[1]} ({mask})")
        present = sorted(set(np.unique(read_mask(mask)).tolist()) - {0, IGNORE_INDEX})
        if image_id in prompts:
            rows.append({"id": image_id, "image": str(image), "mask": str(mask), "class_index": -1,
                         "prompt": prompts[image_id]})
            continue
        if not present:
            empty.append(image_id)
        for c in present:
            if c not in classes:
                raise ValueError(f"image id {image_id}: class index {c} has no prompt; give task.classes "
                                 f"{{{c}: <text>, …}} (known: {dict(sorted(classes.items()))})")
            rows.append({"id": image_id, "image": str(image), "mask": str(mask), "class_index": c,
                         "prompt": classes[c]})
    return VocTable(pd.DataFrame(rows, columns=["id", "image", "mask", "class_index", "prompt"]), empty)
