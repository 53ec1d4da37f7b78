"""Dual-circle evaluation: masks scored against two circles per object instead of a drawn outline.

An annotator marks each object with two concentric circles: everything inside the **inner** one is the
object, everything beyond the **outer** one is not, and the **annulus** between them (where the boundary is)
is left out; rectangles can be left out too. For a predicted mask::

    TP = predicted ∩ inner      FN = not predicted ∩ inner
    FP = predicted ∩ outside    TN = not predicted ∩ outside          (annulus and ignore rectangles: none)

and IoU, Dice, accuracy, precision, recall, F1 of those counts (:func:`prism.tasks.segment.metrics.binary_ratios`,
the metrics every segmentation report uses), per image and pooled.

Annotations: a JSON ``{"<stem>": {"circles": [[cx, cy, r_inner, r_outer], …], "ignore": [[x0, y0, x1, y1],
…]}}`` in pixels. Files pair by stem: a mask ``<stem>-mask.png`` / ``<stem>.mask.png`` (what ``prism predict``
writes) / ``<stem>.png``, an image ``<stem>-noCircles.<ext>`` (the photo without the circles drawn) or
``<stem>.<ext>``. :func:`render` draws a visualisation: the image, the inner disks' outline in green, the
outer in yellow, ignored pixels dimmed, true positives green, false positives red, misses blue.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prism.tasks.segment.metrics import METRICS, binary_ratios

__all__ = ["DualCircle", "evaluate_folder", "load_annotations", "pair_files", "predict_masks", "regions", "render",
           "score", "stem_of"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_MASK = re.compile(r"(?:-mask|\.mask)$")
_IMAGE = re.compile(r"-noCircles$")


@dataclass
class DualCircle:
    """One image's annotation: circles ``(cx, cy, r_inner, r_outer)`` and ignore rectangles ``(x0, y0, x1, y1)``."""

    circles: list[tuple[float, float, float, float]]
    ignore: list[tuple[float, float, float, float]] = field(default_factory=list)


def load_annotations(path: Path) -> dict[str, DualCircle]:
    """The annotation JSON of the module docstring → ``{stem: DualCircle}``; errors name the stem."""
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected a non-empty mapping {{stem: {{circles, ignore}}}}")
    out = {}
    for stem, entry in raw.items():
        circles = [tuple(map(float, c)) for c in entry.get("circles", [])]
        ignore = [tuple(map(float, r)) for r in entry.get("ignore", [])]
        if not circles:
            raise ValueError(f"{path}: {stem!r} has no circles")
        for c in circles:
            if len(c) != 4 or not 0 < c[2] <= c[3]:
                raise ValueError(f"{path}: {stem!r}: a circle is [cx, cy, r_inner, r_outer] with 0 < r_inner <= "
                                 f"r_outer, got {list(c)}")
        for r in ignore:
            if len(r) != 4 or r[0] > r[2] or r[1] > r[3]:
                raise ValueError(f"{path}: {stem!r}: an ignore rectangle is [x0, y0, x1, y1], got {list(r)}")
        out[str(stem)] = DualCircle(circles, ignore)
    return out


def regions(annotation: DualCircle, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) bool ``inner`` (inside an inner circle) and ``scored`` (inner, or beyond every outer circle,
    outside the ignore rectangles)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5  # pixel centres
    inner = np.zeros((height, width), bool)
    outer = np.zeros((height, width), bool)
    for cx, cy, r_in, r_out in annotation.circles:
        d2 = (xx - cx) ** 2 + (yy - cy) ** 2
        inner |= d2 <= r_in ** 2
        outer |= d2 <= r_out ** 2
    scored = inner | ~outer
    for x0, y0, x1, y1 in annotation.ignore:
        scored &= ~((xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1))
    return inner & scored, scored


def score(predicted: np.ndarray, annotation: DualCircle) -> dict[str, float]:
    """(H, W) bool prediction → ``tp, fp, fn, tn`` and the :data:`METRICS` of the module docstring."""
    inner, scored = regions(annotation, *predicted.shape)
    counts = {"tp": int((predicted & inner).sum()), "fn": int((~predicted & inner).sum()),
              "fp": int((predicted & scored & ~inner).sum()), "tn": int((~predicted & scored & ~inner).sum())}
    ratios = binary_ratios(*(torch.tensor(counts[k]) for k in ("tp", "fp", "fn", "tn")))
    return {**counts, **{m: float(ratios[m]) for m in METRICS}}


def stem_of(path: Path) -> str:
    """A file's pairing stem: its name without suffix and without ``-mask`` / ``.mask`` / ``-noCircles``."""
    return _IMAGE.sub("", _MASK.sub("", Path(path).stem))


def pair_files(folder: Path | None) -> dict[str, Path]:
    """``{stem: file}`` of the images under ``folder`` (recursive); two files of one stem are an error."""
    if folder is None:
        return {}
    out: dict[str, Path] = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            stem = stem_of(p)
            if stem in out:
                raise ValueError(f"{out[stem]} and {p} pair to the same stem {stem!r}")
            out[stem] = p
    return out


def render(image: np.ndarray | None, predicted: np.ndarray, annotation: DualCircle) -> np.ndarray:
    """(H, W, 3) uint8 visualisation (see the module docstring); ``image`` None draws on grey."""
    from PIL import Image, ImageDraw

    h, w = predicted.shape
    base = np.full((h, w, 3), 128, np.uint8) if image is None else np.asarray(Image.fromarray(image).resize((w, h)))
    inner, scored = regions(annotation, h, w)
    out = base.astype(np.float32)
    out[~scored] *= 0.4
    for colour, where in (((40, 200, 60), predicted & inner), ((230, 40, 40), predicted & scored & ~inner),
                          ((40, 90, 230), ~predicted & inner)):
        out[where] = 0.45 * out[where] + 0.55 * np.array(colour, np.float32)
    img = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for cx, cy, r_in, r_out in annotation.circles:
        draw.ellipse([cx - r_in, cy - r_in, cx + r_in, cy + r_in], outline=(40, 255, 80))
        draw.ellipse([cx - r_out, cy - r_out, cx + r_out, cy + r_out], outline=(255, 220, 0))
    return np.asarray(img)


def evaluate_folder(annotations: Path, masks: Path, out: Path, images: Path | None = None, threshold: int = 128,
                    visualise: int = 8) -> dict[str, Any]:
    """Score every mask of ``masks`` that has an annotation: ``per_image.csv``, ``metrics.json`` (pooled and
    mean), up to ``visualise`` renders in ``out/visualisations/``. A mask at another size than its image is
    an error; an annotation without a mask is listed as missing."""
    import pandas as pd
    from PIL import Image

    ann = load_annotations(annotations)
    mask_files, image_files = pair_files(masks), pair_files(images)
    missing = sorted(set(ann) - set(mask_files))
    scored = sorted(set(ann) & set(mask_files))
    if not scored:
        raise ValueError(f"no mask under {masks} pairs with an annotation of {annotations} (stems such as "
                         f"{sorted(ann)[:3]}; masks named <stem>-mask.png, <stem>.mask.png or <stem>.png)")
    out = Path(out)
    (out / "visualisations").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, stem in enumerate(scored):
        mask = np.asarray(Image.open(mask_files[stem]).convert("L")) >= threshold
        image = np.asarray(Image.open(image_files[stem]).convert("RGB")) if stem in image_files else None
        if image is not None and image.shape[:2] != mask.shape:
            raise ValueError(f"{stem}: the mask is {mask.shape[1]}x{mask.shape[0]}, the image "
                             f"{image.shape[1]}x{image.shape[0]} ({mask_files[stem]})")
        rows.append({"stem": stem, **score(mask, ann[stem])})
        if i < visualise:
            Image.fromarray(render(image, mask, ann[stem])).save(out / "visualisations" / f"{stem}.png")
    table = pd.DataFrame(rows)
    table.to_csv(out / "per_image.csv", index=False)
    totals = {k: int(table[k].sum()) for k in ("tp", "fp", "fn", "tn")}
    pooled = binary_ratios(*(torch.tensor(totals[k]) for k in ("tp", "fp", "fn", "tn")))
    metrics = {**{m: float(pooled[m]) for m in METRICS}, **{f"image/{m}": float(table[m].mean()) for m in METRICS}}
    report = {"images": len(rows), "missing_masks": missing, "counts": totals, "metrics": metrics}
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    return report


def predict_masks(predictor, images: Path, prompt: str, out: Path, threshold: float | None = None,
                  batch_size: int = 16) -> Path:
    """``predictor``'s mask of ``prompt`` for every image under ``images`` → ``out/<stem>-mask.png``; → ``out``."""
    options = {"prompt": prompt, **({"threshold": threshold} if threshold is not None else {})}
    files = pair_files(images)
    if not files:
        raise ValueError(f"no images under {images}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stems = sorted(files)
    for start in range(0, len(stems), batch_size):
        chunk = stems[start:start + batch_size]
        for stem, result in zip(chunk, predictor.predict([str(files[s]) for s in chunk], tta=False,
                                                         options=options), strict=True):
            (out / f"{stem}-mask.png").write_bytes(result["mask"].data)
    return out
