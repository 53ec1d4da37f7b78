"""The patch-feature task: PCA of a backbone's patch tokens, rendered as colours. Nothing trains.

``prism features pca`` fits the basis (:mod:`prism.tasks.features.run`); this class is what the
predictor, the bundle and Serve use once it exists::

    inputs {"image": (B, 3, S, S)} → model → {"maps": (B, h, w, K)}  (+ "foreground", "fg_maps")
    postprocess → {"grid": [h, w], "render": PNG, "components": .npy (on request)}
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import Field
from ray.data.collate_fn import NumpyBatchCollateFn
from torch import nn

from prism.tasks.base import BinaryOutput, PredictOptions, Task
from prism.tasks.features.artifact import PCA_FILE, pca_from_bytes, pca_to_bytes
from prism.tasks.features.metrics import ComponentVariance
from prism.tasks.features.model import PCAHead
from prism.tasks.features.render import encode_png, render_components, side_by_side
from prism.tasks.features.stats import PCABasis

if TYPE_CHECKING:
    from PIL import Image

    from prism.backbones import Backbone

__all__ = ["FeaturesCollate", "FeaturesOptions", "FeaturesTask"]

NPY_MEDIA_TYPE = "application/x-npy"


class FeaturesOptions(PredictOptions):
    """Request options of the patch-feature task (unset = the job's ``task.render`` settings)."""

    start: int | None = Field(None, ge=0, description="first component shown")
    n: Literal[1, 2, 3] | None = Field(None, description="components shown: 1 grey, 2 red/green, 3 RGB")
    sigmas: float | None = Field(None, gt=0, description="± standard deviations spanning the colour range")
    upsample: Literal["patch", "smooth"] | None = Field(None, description="patch cells or bilinear")
    size: Literal["input", "grid"] = Field("input", description="render at the input's size or the patch grid's")
    side_by_side: bool = Field(False, description="the input image left of the render")
    foreground: bool = Field(False, description="colour the foreground PCA (background black); needs one")
    outputs: list[Literal["png", "npy"]] = Field(
        default_factory=lambda: ["png"], min_length=1,
        description="png = the render; npy = the raw standardised component maps (h, w, K) float32")


class FeaturesCollate(NumpyBatchCollateFn):
    """``{"image": uint8 (B, S, S, 3), …}`` → ``({"image": uint8 tensor}, {})`` (no targets)."""

    def __call__(self, batch: dict[str, np.ndarray]):
        return {"image": torch.from_numpy(np.ascontiguousarray(batch["image"]))}, {}


class FeaturesTask(Task):
    """A fixed PCA basis on the backbone's patches (``task.components`` kept)."""

    name = "features"
    options_class = FeaturesOptions

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tcfg = cfg.task
        self.meta: dict[str, Any] = {}
        self.total_variance: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    # -- examples ----------------------------------------------------------------------------------
    @classmethod
    def example_job(cls) -> dict[str, Any]:
        """4 components of the tiny DINOv2 at 28 px (a 2×2 grid), with a foreground PCA."""
        return {"task": {"name": "features", "components": 4, "foreground": {"threshold": 0.0}},
                "backbone": {"name": "dinov2_tiny", "img_size": 28}, "lora": None, "stages": [],
                "data": {"source": "images"}}

    def example_batch(self, n: int, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        s = self.img_size
        return {"image": rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)}

    # -- model -------------------------------------------------------------------------------------
    def build_heads(self, backbone: Backbone) -> PCAHead:
        head = PCAHead(backbone.embed_dim, self.tcfg.components, foreground=self.tcfg.foreground is not None)
        self.k = head.k
        return head

    def parse_options(self, options):
        """The options, checked against this model: the components shown must be among those kept, and the
        foreground PCA must exist to be shown (``ValueError``: Serve answers 400)."""
        o = super().parse_options(options)
        r = self.tcfg.render
        start, n = (r.start if o.start is None else o.start), (r.n if o.n is None else o.n)
        k = getattr(self, "k", self.tcfg.components)
        if start + n > k:
            raise ValueError(f"start={start}, n={n}: components [{start}, {start + n}) are not among the {k} kept")
        if o.foreground and self.tcfg.foreground is None:
            raise ValueError("foreground: this model has no foreground PCA (fit one with task.foreground)")
        return o

    def set_basis(self, model: nn.Module, basis: PCABasis, fg: PCABasis | None = None,
                  meta: dict[str, Any] | None = None) -> None:
        """Put a fitted basis (and the foreground one) into ``model``'s head; ``meta`` goes to ``pca.json``."""
        f = self.tcfg.foreground
        model.heads.set_basis(basis, fg, threshold=f.threshold if f else 0.0, invert=bool(f and f.invert))
        self.total_variance = {"": basis.total_variance, **({"fg_": fg.total_variance} if fg else {})}
        self.counts = {"": basis.count, **({"fg_": fg.count} if fg else {})}
        self.meta = dict(meta or {})

    def basis(self, model: nn.Module, prefix: str = "") -> PCABasis:
        """The head's basis (``prefix`` "fg_" = the foreground one) as a :class:`PCABasis`."""
        h = model.heads
        eig = getattr(h, f"{prefix}scale").double() ** 2
        return PCABasis(mean=getattr(h, f"{prefix}mean").double().cpu(),
                        components=getattr(h, f"{prefix}components").double().cpu(), eigenvalues=eig.cpu(),
                        total_variance=self.total_variance.get(prefix, float(eig.sum())),
                        count=self.counts.get(prefix, 0))

    # -- data / training: nothing trains --------------------------------------------------------------
    def collate_fn(self) -> FeaturesCollate:
        return FeaturesCollate()

    def loss(self, outputs, targets):
        raise NotImplementedError("the features task does not train; run `prism features pca JOB`")

    def metrics(self) -> ComponentVariance:
        return ComponentVariance()

    # -- inference ---------------------------------------------------------------------------------
    def predictions(self, model: nn.Module, inputs: dict[str, torch.Tensor], tta: bool | list[str] = True
                    ) -> dict[str, torch.Tensor]:
        """``{"image": (B, 3, S, S)}`` → ``{"maps": (B, h, w, K)}`` float32 standardised components (+
        ``"foreground"`` bool (B, h, w) and ``"fg_maps"`` with a foreground PCA). No test-time views:
        a flipped view's maps are other patches."""
        out = model(inputs)
        return {k: (v.float() if v.is_floating_point() else v) for k, v in out.items()}

    def preprocess(self, image: Image.Image, options: PredictOptions) -> tuple[dict[str, np.ndarray], dict]:
        """RGB image → ``{"image": uint8 (S, S, 3)}``; meta: the original size (and the image itself when
        the render goes beside it)."""
        from prism.data.images import resize_rgb

        meta: dict[str, Any] = {"size": list(image.size)}
        if getattr(options, "side_by_side", False):
            meta["image"] = np.asarray(image.convert("RGB"))
        return {"image": resize_rgb(image, self.img_size)}, meta

    def render(self, maps: np.ndarray, size: tuple[int, int] | None, options: FeaturesOptions | None = None,
               image: np.ndarray | None = None, foreground: np.ndarray | None = None) -> np.ndarray:
        """(h, w, K) maps → uint8 (H, W, 3) under ``options`` (unset fields: ``task.render``); a
        ``foreground`` (h, w) mask blacks the background out; ``image`` goes on the left."""
        r = self.tcfg.render
        o = options or FeaturesOptions()
        start = r.start if o.start is None else o.start
        n = r.n if o.n is None else o.n
        if start + n > maps.shape[-1]:
            raise ValueError(f"components [{start}, {start + n}) are not among the {maps.shape[-1]} kept")
        upsample = o.upsample or r.upsample
        rgb = render_components(maps, size, upsample, start, n, o.sigmas or r.sigmas)
        if foreground is not None:
            from PIL import Image

            mask = Image.fromarray(foreground.astype(np.uint8))  # patch cells, upsampled as flat blocks
            if size is not None:
                mask = mask.resize((size[1], size[0]), Image.NEAREST)
            rgb = rgb * np.asarray(mask, dtype=np.uint8)[..., None]
        return rgb if image is None else side_by_side(image, rgb)

    def shown_maps(self, prediction: dict[str, Any], options: FeaturesOptions) -> np.ndarray:
        """One image's (h, w, K) maps that ``options`` show: the main PCA's or the foreground PCA's."""
        if options.foreground and "fg_maps" not in prediction:
            raise ValueError("this model has no foreground PCA (fit one with task.foreground)")
        return prediction["fg_maps" if options.foreground else "maps"].detach().float().cpu().numpy()

    def render_prediction(self, prediction: dict[str, Any], size: tuple[int, int] | None,
                          options: FeaturesOptions, image: np.ndarray | None = None) -> np.ndarray:
        """One image's predictions → its uint8 (H, W, 3) render at ``size`` (H, W) (None = the grid)."""
        fg = prediction["foreground"].cpu().numpy() if options.foreground else None
        return self.render(self.shown_maps(prediction, options), size, options, image, fg)

    def postprocess(self, prediction: dict[str, Any], meta: dict, options: PredictOptions) -> dict[str, Any]:
        """``{"maps": (h, w, K)}`` → ``{"grid": [h, w], "render": PNG, "components": .npy}`` as asked."""
        o = options if isinstance(options, FeaturesOptions) else FeaturesOptions()
        maps = self.shown_maps(prediction, o)
        out: dict[str, Any] = {"grid": list(maps.shape[:2])}
        if "foreground" in prediction:
            out["foreground_fraction"] = float(prediction["foreground"].float().mean())
        if "png" in o.outputs:
            w, h = meta.get("size") or (maps.shape[1], maps.shape[0])
            size = None if o.size == "grid" else (int(h), int(w))
            out["render"] = BinaryOutput(encode_png(self.render_prediction(prediction, size, o, meta.get("image"))))
        if "npy" in o.outputs:
            buf = io.BytesIO()
            np.save(buf, maps.astype(np.float32))
            out["components"] = BinaryOutput(buf.getvalue(), NPY_MEDIA_TYPE)
        return out

    # -- bundle -----------------------------------------------------------------------------------
    def artifacts(self, model: nn.Module) -> dict[str, bytes]:
        """``pca.safetensors`` + ``pca.json`` from the head's basis."""
        fg = self.basis(model, "fg_") if model.heads.has_foreground else None
        meta = {**self.meta, "components_kept": model.heads.k, "fitted": bool(model.heads.fitted),
                "foreground": None if self.tcfg.foreground is None else self.tcfg.foreground.model_dump()}
        return pca_to_bytes(self.basis(model), fg, meta)

    def load_artifacts(self, model: nn.Module, artifacts: dict[str, bytes]) -> None:
        if PCA_FILE not in artifacts:
            raise ValueError(f"a features bundle holds {PCA_FILE}; this one has {sorted(artifacts) or 'none'}")
        basis, fg, meta = pca_from_bytes(artifacts)
        fitted = meta.pop("fitted", True)
        self.set_basis(model, basis, fg, {k: v for k, v in meta.items() if k not in ("format", "components_kept",
                                                                                      "foreground")})
        model.heads.fitted.fill_(int(bool(fitted)))
