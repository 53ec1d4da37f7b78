"""The predictor: preprocessing, batching, TTA and postprocessing beside the model.

``prism predict``, ``prism evaluate``, the MLflow pyfunc flavour and the Serve deployment all call the same
:class:`Predictor`, so a result never depends on which door it came through.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from prism.data.images import array_to_uint8, decode_image, read_bytes, to_rgb
from prism.engine.inputs import model_inputs, stack_inputs, unbatch
from prism.engine.predict import predict_batch

__all__ = ["IMAGE_SUFFIXES", "ImageInput", "Predictor", "Prepared", "expand_image_paths", "load_predictor"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
ImageInput = str | Path | bytes | Image.Image | np.ndarray


def expand_image_paths(items: Iterable[str | Path]) -> list[Path]:
    """Files as given; directories expanded to their image files (sorted). Missing paths raise."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {p}")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"image not found: {p}")
    return out


Prepared = tuple[dict[str, np.ndarray], dict[str, Any]]
"""One image after :meth:`Task.preprocess`: model inputs without batch dim, and its meta."""


class Predictor:
    """Images → JSON-able results for one model bundle (see :mod:`prism.inference.bundle`), for any task.

    ``decode`` (bytes, path, array, PIL → RGB PIL) → ``task.preprocess(image, options)`` → stacked batch →
    :func:`~prism.engine.predict.predict_batch` (no grad, ``train.amp``) → one ``task.postprocess`` per image.
    """

    def __init__(self, cfg, task, model: torch.nn.Module, device: str | torch.device = "cpu",
                 source: str = ""):
        self.cfg = cfg
        self.task = task
        self.model = model.eval()
        self.device = torch.device(device)
        self.source = source
        self.img_size = int(cfg.backbone.img_size)

    @classmethod
    def from_bundle(cls, path: str | Path, device: str | torch.device | None = None,
                    merge: bool = True) -> Predictor:
        """The predictor of a bundle folder; ``merge`` folds LoRA into the weights (same outputs, faster)."""
        from prism.inference.bundle import load_bundle

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        cfg, task, model = load_bundle(Path(path), device=device, merge=merge)
        return cls(cfg, task, model, device, source=str(path))

    def options(self, options: Any = None, tta: bool | None = None) -> Any:
        """``options`` (dict, model or None) as the task's options model, ``tta`` filled in (default True)."""
        opts = self.task.parse_options(options)
        if tta is not None or opts.tta is None:
            opts = opts.model_copy(update={"tta": True if tta is None else tta})
        return opts

    def decode(self, image: ImageInput, name: str = "<image>") -> Image.Image:
        """One input → an RGB PIL image; undecodable input raises ``ValueError`` naming ``name``.

        Arrays are ``(H, W, 3|4)`` (RGB or RGBA), converted to uint8 by
        :func:`~prism.data.images.array_to_uint8`: uint8 as is, floats in ``[0, 1]`` scaled by 255, other
        integers within 0..255 cast; anything else is a ``ValueError`` naming its dtype and range.
        """
        if isinstance(image, Image.Image):
            img = image
        elif isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[-1] not in (3, 4):
                raise ValueError(f"{name}: array images must be (H, W, 3|4), got {image.shape}")
            img = Image.fromarray(np.ascontiguousarray(array_to_uint8(image, name)))
        elif isinstance(image, (bytes, bytearray, memoryview)):
            img = decode_image(bytes(image), name)
        else:
            img = decode_image(read_bytes(str(image)), str(image))
        return to_rgb(img, name)

    def prepare(self, image: ImageInput, name: str = "<image>", options: Any = None) -> Prepared:
        """One input → ``task.preprocess`` of its decoded image: ``(inputs, meta)``."""
        return self.task.preprocess(self.decode(image, name), self.options(options))

    @torch.no_grad()
    def predict_prepared(self, prepared: Sequence[Prepared], options: Any = None) -> list[dict[str, Any]]:
        """Prepared images (:meth:`prepare`) → one result each (no names), in one batch.

        ``options``: one set for every image, or a list with one per image (Serve batches images of several
        requests; they must agree on ``tta``, the only option predictions depend on)."""
        per_image = ([self.options(o) for o in options] if isinstance(options, list)
                     else [self.options(options)] * len(prepared))
        tta = {bool(o.tta) for o in per_image}
        if len(tta) != 1:
            raise ValueError("images of one batch must share the tta option; batch them per tta value")
        preds = self.raw_predictions(prepared, tta=tta.pop())
        return [self.task.postprocess(p, meta, o)
                for p, (_, meta), o in zip(unbatch(preds, len(prepared)), prepared, per_image, strict=True)]

    @torch.no_grad()
    def raw_predictions(self, prepared: Sequence[Prepared], tta: bool = True) -> dict[str, Any]:
        """Prepared images → the task's batched predictions (``task.predictions``: (B, …) tensors), before
        any postprocessing; what embeddings of example or held-out images are read from."""
        batch = stack_inputs([inputs for inputs, _ in prepared])
        inputs = model_inputs(batch, self.device, self.model.backbone.mean, self.model.backbone.std)
        return predict_batch(self.task, self.model, inputs, tta=tta, amp=self.cfg.train.amp)

    def predict(self, images: Sequence[ImageInput], tta: bool | None = None, batch_size: int = 32,
                names: Sequence[str] | None = None, progress: bool = False, options: Any = None
                ) -> list[dict[str, Any]]:
        """Results in input order, each ``{"image": name, <task fields>}``; ``options`` are the task's
        request options (``tta`` overrides ``options.tta``; default True)."""
        opts = self.options(options, tta)
        if names is None:
            names = [str(i) if isinstance(i, (str, Path)) else f"image_{k}" for k, i in enumerate(images)]
        results: list[dict[str, Any]] = []
        steps = range(0, len(images), batch_size)
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc="predict", unit="batch")
        for start in steps:
            chunk = images[start:start + batch_size]
            prepared = [self.prepare(im, names[start + k], opts) for k, im in enumerate(chunk)]
            for k, r in enumerate(self.predict_prepared(prepared, opts)):
                results.append({"image": names[start + k], **r})
        return results

    def to_dataframe(self, results: list[dict[str, Any]]) -> pd.DataFrame:
        return self.task.results_frame(results)

    def info(self) -> dict[str, Any]:
        return {"source": self.source, "task": self.task.name, "backbone": self.cfg.backbone.name,
                "img_size": self.img_size, "labels": self.task.label_maps()}


def load_predictor(source: str | Path, device: str | torch.device | None = None,
                   merge: bool = True) -> Predictor:
    """A predictor from ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/…`` or a bundle folder."""
    from prism.tracking import resolve_model_uri

    path = resolve_model_uri(str(source))
    pred = Predictor.from_bundle(path, device=device, merge=merge)
    pred.source = str(source)
    return pred


def image_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    """Encode a PIL image (helper for clients and tests)."""
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()
