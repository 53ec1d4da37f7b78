"""What ``prism evaluate`` scores for a text-prompted segmenter, and what it writes beside the metrics.

:func:`select_voc_rows` picks the (image, prompt) rows, as :class:`~prism.inference.evaluate.EvalRows` for
the generic evaluation loop (each image prepared with its own row's prompt, as ``prism predict`` and Serve
prepare it; the task's collate class; :func:`~prism.engine.predict.predict_batch`; the metric):

- no folder given: the **validation split** of the model's own training data (``data.voc.*`` of its config;
  the synthetic set's when it trained on one);
- ``voc``: that VOC folder's ``ImageSets/Segmentation/<split>.txt`` (or ``list_file``; every image when
  ``split`` is None or ``"all"``), its masks prompted by the model's ``task.classes``;
- ``first``: only the first N rows (a "mini" evaluation).

Targets are the rows' masks resized to the model's input size (nearest; void stays void), the geometry of
training's validation. Pooled and per-image IoU, Dice, accuracy, precision, recall, F1
(:class:`~prism.tasks.segment.metrics.SegmentationMetrics`, checked against scikit-learn in the tests) at the
evaluation's ``threshold``. :func:`write_segment_outputs` adds, for the first ``samples`` rows,
``masks/<id>_<prompt>.png`` (the predicted mask at the image's size) and ``overlays/<id>_<prompt>.png``
(the image, the prediction tinted red, the ground truth outlined in green).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prism.tasks.segment.metrics import SegmentationMetrics

if TYPE_CHECKING:
    from PIL import Image

    from prism.inference.evaluate import EvalReport, EvalRows
    from prism.inference.predictor import Predictor

__all__ = ["overlay", "select_voc_rows", "write_segment_outputs"]


def select_voc_rows(predictor: Predictor, voc: Path | None = None, split: str | None = "val",
                    list_file: Path | None = None, first: int | None = None, threshold: float | None = None
                    ) -> EvalRows:
    """The rows to score (see the module docstring) with their per-row prompt, mask loader and metric."""
    from prism.data.voc import read_voc
    from prism.data.voc_datasets import voc_root, voc_split
    from prism.inference.evaluate import EvalRows
    from prism.tasks.segment.batches import DecodeSegmentation

    cfg, task = predictor.cfg, predictor.task
    if first is not None and first < 1:
        raise ValueError(f"--first {first}: give a number of rows >= 1")
    if threshold is not None and not 0 < threshold < 1:
        raise ValueError(f"--threshold {threshold}: give a mask probability in (0, 1)")
    split = None if split == "all" else split
    if voc is None:
        if list_file is not None:
            raise ValueError("--list goes with --voc; without it the validation split is read as training read it")
        _, table = voc_split(cfg)
        root = voc_root(cfg)
        scored: dict[str, Any] = {"rows": "validation split", "voc": str(root)}
    else:
        table = read_voc(voc, split, list_file=list_file, classes=task.classes)
        scored = {"rows": f"list {list_file}" if list_file else (f"split {split}" if split else "every image"),
                  "voc": str(Path(voc).resolve())}
    rows = table.rows.iloc[:first] if first is not None else table.rows
    rows = rows.reset_index(drop=True)
    if len(rows) == 0:
        raise ValueError(f"no (image, prompt) rows to score in {scored['voc']}")
    decode = DecodeSegmentation(task.img_size, task.tcfg.text.name)

    def columns(start: int, stop: int) -> dict[str, np.ndarray]:
        part = rows.iloc[start:stop]
        batch = decode({k: part[k].to_numpy() for k in ("id", "image", "mask", "class_index", "prompt")})
        return {k: batch[k] for k in ("mask", "id", "prompt")}

    what = f"{scored['rows']}: {len(rows)} (image, prompt) rows of {scored['voc']}"
    what += f" (the first {first})" if first else ""
    scored.update(n_images=len(rows), first=first, describe=what)
    metric = SegmentationMetrics(threshold or task.tcfg.threshold, keep_images=len(rows))
    options = [{"prompt": str(p), **({"threshold": threshold} if threshold else {})} for p in rows["prompt"]]
    return EvalRows(rows.rename(columns={"image": "path"})[["path", "id", "prompt", "mask", "class_index"]], len(table.empty),
                    scored, columns, metric, options)


def overlay(image: Image.Image, predicted: np.ndarray, truth: np.ndarray | None = None, alpha: float = 0.45
            ) -> Image.Image:
    """``image`` with ``predicted`` (H, W) bool tinted red and the outline of ``truth`` (H, W) bool in green."""
    from PIL import Image as PILImage
    from scipy import ndimage

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    red = np.array([230.0, 40.0, 40.0])
    rgb[predicted] = (1 - alpha) * rgb[predicted] + alpha * red
    if truth is not None:
        edge = truth & ~ndimage.binary_erosion(truth, iterations=max(1, min(truth.shape) // 100))
        rgb[edge] = (40.0, 220.0, 60.0)
    return PILImage.fromarray(rgb.clip(0, 255).astype(np.uint8))


def _stem(image_id: str, prompt: str) -> str:
    return f"{image_id}_{re.sub(r'[^A-Za-z0-9]+', '-', prompt).strip('-') or 'prompt'}"


def write_segment_outputs(report: EvalReport, predictor: Predictor, rows: EvalRows, out_dir: Path,
                          samples: int = 8, threshold: float | None = None) -> list[Path]:
    """Predicted mask PNGs and overlays of the first ``samples`` rows (see the module docstring)."""
    import io

    from PIL import Image as PILImage

    from prism.data.voc import read_mask
    from prism.tasks.segment.batches import object_mask

    out_dir = Path(out_dir)
    written: list[Path] = []
    if samples <= 0:
        return written
    for sub in ("masks", "overlays"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    picked = rows.rows.iloc[:samples]
    images = [PILImage.open(p).convert("RGB") for p in picked["path"]]
    for (_, row), image, opts in zip(picked.iterrows(), images, rows.options or [{}] * len(picked), strict=False):
        (result,) = predictor.predict([image], tta=False, options={**opts, **({"threshold": threshold}
                                                                              if threshold else {})})
        mask = np.asarray(PILImage.open(io.BytesIO(result["mask"].data))) > 0
        truth = object_mask(read_mask(row["mask"]), int(row["class_index"])) == 1
        stem = _stem(str(row["id"]), str(row["prompt"]))
        (out_dir / "masks" / f"{stem}.png").write_bytes(result["mask"].data)
        overlay(image, mask, truth if truth.shape == mask.shape else None).save(out_dir / "overlays" / f"{stem}.png")
        written += [out_dir / "masks" / f"{stem}.png", out_dir / "overlays" / f"{stem}.png"]
    return written
