"""``prism export sam-embeddings``: SAM's image embedding of every image of a folder or list, one file each.

Images: every image file under a folder (recursive unless told otherwise), or the paths a list file names
(one per line, relative to the list's folder). Each goes through SAM's own preprocessing — the longest side
resized to the encoder's size (segment-anything's ``ResizeLongestSide``), normalised by SAM's pixel mean /
std, padded bottom-right to a square — and SAM's image encoder (a ``sam_*`` backbone, weights from an
official checkpoint), through Ray Data: one encoder per worker, batches of images.

Written under ``out``, mirroring the images' folders relative to the source, with the image's stem::

    <out>/<relative folder>/<stem>.safetensors   {"embedding": float32 (256, 64, 64)}  (C, H, W), SAM's layout
                          <stem>.npy             the same array
                          <stem>.pt              {"embedding": tensor, **metadata}   (on request)

with metadata ``original_size`` (H, W), ``input_size`` (the resized H, W before padding), ``backbone`` and
``weights_sha256`` (in the safetensors header, and ``index.csv`` beside the files: image, file, sizes).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from prism.data.voc import IMAGE_SUFFIXES

__all__ = ["EmbedImages", "SamEmbeddingsReport", "export_sam_embeddings", "list_images"]

Format = Literal["safetensors", "npy", "pt"]
SUFFIX = {"safetensors": ".safetensors", "npy": ".npy", "pt": ".pt"}


def list_images(source: Path, recursive: bool = True) -> tuple[list[Path], Path]:
    """The images of ``source`` (a folder, or a list file of paths) and the folder their outputs mirror."""
    source = Path(source)
    if source.is_dir():
        pattern = source.rglob("*") if recursive else source.glob("*")
        paths = sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        base = source
        if not paths:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {source}"
                             + ("" if recursive else " (not searched recursively)"))
    elif source.is_file():
        base = source.parent
        lines = [ln.strip() for ln in source.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        paths = [p if p.is_absolute() else base / p for p in map(Path, lines)]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ValueError(f"{source} names {len(missing)} missing image(s), e.g. {missing[:3]}")
        if not paths:
            raise ValueError(f"{source} names no image")
    else:
        raise ValueError(f"{source} is neither a folder nor a list file")
    return paths, base


def _relative(path: Path, base: Path) -> Path:
    try:
        return path.resolve().relative_to(base.resolve())
    except ValueError:  # a list may name images outside its folder: keep their name only
        return Path(path.name)


class EmbedImages:
    """Ray Data ``map_batches`` callable: ``{"path", "target"}`` rows → files written, one row per image."""

    def __init__(self, backbone: str, weights: str | None, img_size: int, fmt: Format, device: str | None = None):
        import torch

        from prism.backbones import create_backbone

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = create_backbone(backbone, weights=weights, img_size=img_size).eval().to(self.device)
        if self.model.family != "sam":
            raise ValueError(f"{backbone!r} is not a SAM image encoder; use one of sam_vit_b, sam_vit_l, sam_vit_h")
        self.img_size, self.fmt = img_size, fmt
        self.meta = {"backbone": backbone, "weights_sha256": self.model.weights_sha256}

    def prepare(self, path: str) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """One image → SAM's input (3, S, S) float32, its (H, W) and the resized (h, w) before padding."""
        from segment_anything.utils.transforms import ResizeLongestSide

        from prism.data.images import decode_image, read_bytes

        image = np.asarray(decode_image(read_bytes(path), path).convert("RGB"))
        resized = ResizeLongestSide(self.img_size).apply_image(image)
        mean = np.array(self.model.mean, np.float32) * 255
        std = np.array(self.model.std, np.float32) * 255
        x = np.zeros((self.img_size, self.img_size, 3), np.float32)  # padding: 0 after normalisation, as SAM
        h, w = resized.shape[:2]
        x[:h, :w] = (resized.astype(np.float32) - mean) / std
        return x.transpose(2, 0, 1), image.shape[:2], (h, w)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        prepared = [self.prepare(str(p)) for p in batch["path"]]
        x = torch.from_numpy(np.stack([p[0] for p in prepared])).to(self.device)
        with torch.no_grad():
            emb = self.model(x)["patches"].permute(0, 3, 1, 2).float().cpu().contiguous()  # (B, C, g, g)
        for target, e, (_, size, inp) in zip(batch["target"], emb, prepared, strict=True):
            write_embedding(Path(str(target)), e, {**self.meta, "original_size": list(size), "input_size": list(inp)},
                            self.fmt)
        return {"path": batch["path"], "file": batch["target"],
                "original_size": np.array([p[1] for p in prepared]), "input_size": np.array([p[2] for p in prepared])}


def write_embedding(path: Path, embedding, meta: dict[str, Any], fmt: Format) -> None:
    """``embedding`` (C, H, W) tensor to ``path`` in ``fmt`` (see the module docstring)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({"embedding": embedding}, str(path), metadata={k: json.dumps(v) for k, v in meta.items()})
    elif fmt == "npy":
        np.save(path, embedding.numpy())
    else:
        torch.save({"embedding": embedding, **meta}, path)


@dataclass
class SamEmbeddingsReport:
    n_images: int
    out: Path
    index: Path


def export_sam_embeddings(source: Path, out: Path, backbone: str = "sam_vit_b", weights: str | None = None,
                          img_size: int = 1024, fmt: Format = "safetensors", recursive: bool = True,
                          batch_size: int = 4, overwrite: bool = False, progress: bool = True) -> SamEmbeddingsReport:
    """Embed every image of ``source`` into ``out`` (see the module docstring) on the local / joined Ray."""
    import ray.data

    from prism.backbones.sam import SPECS
    from prism.runtime.ray_cluster import ensure_ray

    if fmt not in SUFFIX:
        raise ValueError(f"format {fmt!r}: use one of {', '.join(SUFFIX)}")
    if backbone not in SPECS:  # the workers build the encoder: fail here, before Ray starts
        raise ValueError(f"{backbone!r} is not a SAM image encoder; use one of {', '.join(SPECS)}")
    if weights is not None and not Path(weights).is_file():
        raise ValueError(f"weights file not found: {weights}")
    paths, base = list_images(source, recursive)
    targets = [Path(out) / _relative(p, base).with_suffix(SUFFIX[fmt]) for p in paths]
    seen: dict[Path, Path] = {}
    for p, t in zip(paths, targets, strict=True):
        if t in seen:
            raise ValueError(f"{seen[t]} and {p} would both write {t}: give them different stems or folders")
        seen[t] = p
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise ValueError(f"{len(existing)} output file(s) exist already, e.g. {existing[0]}; pass --overwrite")
    ensure_ray()
    import torch

    gpu = torch.cuda.is_available()
    ds = ray.data.from_items([{"path": str(p), "target": str(t)} for p, t in zip(paths, targets, strict=True)])
    ds = ds.map_batches(EmbedImages, fn_constructor_args=(backbone, str(weights) if weights else None, img_size, fmt),
                        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=1), num_gpus=1 if gpu else 0)
    rows = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc="sam-embeddings", unit="img")
    for row in ds.iter_rows():
        rows.append(row)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    Path(out).mkdir(parents=True, exist_ok=True)
    index = Path(out) / "index.csv"
    with index.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "file", "original_h", "original_w", "input_h", "input_w"])
        for r in sorted(rows, key=lambda r: r["path"]):
            w.writerow([r["path"], str(Path(r["file"]).relative_to(out)), *map(int, r["original_size"]),
                        *map(int, r["input_size"])])
    return SamEmbeddingsReport(len(rows), Path(out), index)
