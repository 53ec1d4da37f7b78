"""``prism features pca``: stream a collection through the backbone actors, sum statistics, solve, publish.

::

    list_collection → chunks of images (or one video each)
      └─ per chunk: read_frames → map_batches(PatchStatsMapper, concurrency=actors) → one stats row per batch
           └─ driver merges rows as they stream (memory O(C²)) and saves the chunk's statistics
    all chunks merged → PCA (task.components) → [foreground pass: same again on foreground patches]
      └─ bundle (pca.safetensors + pca.json) → MLflow run (+ registered version, alias moved)

A chunk's statistics file is named by the chunk's file paths and the run's fingerprint (backbone, weights,
img_size, precision, pass; :func:`run_fingerprint`), so a rerun of a killed job reads the finished chunks back instead of recomputing them,
and ``prism features merge`` can combine the statistics of separate runs (e.g. parts of a collection).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prism.tasks.features.stats import PatchStats, PCABasis

if TYPE_CHECKING:
    import pandas as pd

    from prism.config import JobConfig

__all__ = ["FeaturesOutcome", "fit_pca", "merge_partials", "publish_features", "run_fingerprint"]

log = logging.getLogger(__name__)
PARTIALS = "partials"


@dataclass
class FeaturesOutcome:
    """What a PCA run produced: the bases, totals, the bundle folder and (when logged) run and version."""

    basis: PCABasis
    foreground: PCABasis | None
    meta: dict[str, Any]
    bundle: Path
    run_id: str | None = None
    model_version: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def run_fingerprint(cfg: JobConfig, weights_sha256: str, pass_name: str, adapted: bytes | None = None,
                    basis: dict[str, bytes] | None = None) -> str:
    """What a chunk's statistics depend on besides its images: backbone, weights, the adapted tensors of
    ``task.lora_from``, img_size, the precision the actors run in, the frame sampling of videos, the pass
    and, for the foreground pass, its threshold and the main basis that decides the mask."""
    fg = cfg.task.foreground
    v = cfg.data.video
    key = {"backbone": cfg.backbone.name, "weights": weights_sha256, "img_size": cfg.backbone.img_size,
           "adapted": hashlib.sha256(adapted).hexdigest() if adapted else None, "amp": str(_actor_amp(cfg)),
           "pass": pass_name, "foreground": None if fg is None or pass_name == "main" else fg.model_dump(),
           "basis": None if basis is None else hashlib.sha256(b"".join(basis[k] for k in sorted(basis))).hexdigest(),
           "video": {"frame_stride": v.frame_stride, "fps": v.fps} if cfg.data.source == "video" else None}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _actor_gpus(cfg: JobConfig) -> float:
    import torch

    x = cfg.task.extract
    return x.num_gpus if x.num_gpus is not None else (1.0 if torch.cuda.is_available() else 0.0)


def _actor_amp(cfg: JobConfig):
    """The autocast dtype the actors run the backbone in (None = float32)."""
    import torch

    from prism.engine.precision import resolve_amp

    return resolve_amp(cfg.train.amp, torch.device("cuda" if _actor_gpus(cfg) else "cpu"))


def _chunk_file(folder: Path, pass_name: str, index: int, rows: pd.DataFrame, fingerprint: str) -> Path:
    digest = hashlib.sha256("\n".join(rows["path"]).encode() + fingerprint.encode()).hexdigest()[:12]
    return folder / PARTIALS / f"{pass_name}-{index:05d}-{digest}.safetensors"


def _describe_backbone(cfg: JobConfig) -> dict[str, Any]:
    from prism.backbones import create_backbone

    b = cfg.backbone
    bb = create_backbone(b.name, pretrained=b.pretrained, weights=b.weights, img_size=b.img_size, seed=b.seed)
    grid = bb.img_size // bb.patch_size
    return {"name": bb.name, "weights_sha256": bb.weights_sha256, "img_size": bb.img_size,
            "patch_size": bb.patch_size, "grid": [grid, grid], "embed_dim": bb.embed_dim,
            "patches_per_image": grid * grid}


class _Progress:
    """One tqdm bar over the images of a pass, with patches/s beside images/s."""

    def __init__(self, total: int | None, desc: str, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)
        self.start = time.perf_counter()
        self.patches = 0

    def update(self, images: int, patches: int) -> None:
        self.patches += patches
        rate = self.patches / max(1e-9, time.perf_counter() - self.start)
        self.bar.set_postfix_str(f"{rate:,.0f} patches/s", refresh=False)
        self.bar.update(images)

    def close(self) -> None:
        self.bar.close()


def _stream(cfg: JobConfig, source: str, rows: pd.DataFrame, dim: int, basis: dict[str, bytes] | None,
            backbone_tensors: bytes | None):
    """Stats rows of ``rows`` (with their ``chunk`` column) from one pipeline of backbone actors, in order:
    ``(chunk, PatchStats, images)`` per batch and chunk."""
    import ray.data
    import torch

    from prism.data.collection import read_frames
    from prism.tasks.features.extract import DEFAULT_BATCH, PatchStatsMapper

    x = cfg.task.extract
    num_gpus = _actor_gpus(cfg)
    batch = x.batch_size or DEFAULT_BATCH
    v = cfg.data.video
    ds = read_frames(source, rows, cfg.backbone.img_size, batch_size=min(batch, 64), fps=v.fps,
                     stride=v.frame_stride)
    kwargs = {"job": cfg.model_dump(mode="json"), "basis": basis, "backbone_tensors": backbone_tensors,
              "threads": x.threads or max(1, (os.cpu_count() or 1) // x.actors)}
    ds = ds.map_batches(PatchStatsMapper, fn_constructor_kwargs=kwargs,
                        batch_size=batch, compute=ray.data.ActorPoolStrategy(size=x.actors),
                        num_gpus=num_gpus or None, num_cpus=1)
    for out in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
        for i in range(len(out["count"])):
            part = PatchStats(dim)
            part.n = int(out["count"][i])
            if part.n:
                part.mean = torch.from_numpy(np.array(out["mean"][i], dtype=np.float64))
                part.m2 = torch.from_numpy(np.array(out["m2"][i], dtype=np.float64))
            yield int(out["chunk"][i]), part, int(out["images"][i])


def _pass(cfg: JobConfig, collection, backbone: dict[str, Any], pass_name: str, basis: dict[str, bytes] | None,
          progress: bool, backbone_tensors: bytes | None = None, image_cap: int | None = None
          ) -> tuple[PatchStats, int]:
    """Every chunk of one pass: finished ones read back from their files, the rest streamed through one
    actor pipeline and saved as each ends. Returns the merged statistics and the images seen.

    ``task.extract.max_samples`` keeps the first ⌈max_samples / patches per image⌉ images of an image
    collection (every pass the same); a video's frames are only known as they stream, so its main pass stops
    after the batch that reaches the cap, and ``image_cap`` stops a later pass at the frames the main pass
    saw. A chunk cut short by a cap is not saved."""
    import pandas as pd

    from prism.data.collection import collection_chunks

    x = cfg.task.extract
    dim = backbone["embed_dim"]
    folder = Path(cfg.task.output)
    fingerprint = run_fingerprint(cfg, backbone["weights_sha256"], pass_name, backbone_tensors, basis)
    rows = collection.rows
    video = collection.source == "video"
    if x.max_samples is not None and not video:
        rows = rows.iloc[: -(-x.max_samples // backbone["patches_per_image"])]
    patch_cap = x.max_samples if video and image_cap is None else None
    chunks = collection_chunks(type(collection)(collection.source, rows, collection.root), x.chunk_images)
    files = [_chunk_file(folder, pass_name, i, c, fingerprint) for i, c in enumerate(chunks)]
    stats: dict[int, PatchStats] = {}
    images: dict[int, int] = {}
    bar = _Progress(None if video else len(rows), f"{pass_name} pass", progress)
    for i, f in enumerate(files):
        if f.is_file():
            stats[i], meta = PatchStats.load(f)
            images[i] = int(meta["images"])
            bar.update(images[i], 0)
    todo = [i for i in range(len(chunks)) if i not in stats]
    if len(todo) < len(chunks):
        print(f"[prism] {pass_name} pass: {len(chunks) - len(todo)} of {len(chunks)} chunk(s) read back from "
              f"{folder / PARTIALS}", flush=True)

    def capped() -> bool:
        return ((patch_cap is not None and sum(s.n for s in stats.values()) >= patch_cap)
                or (image_cap is not None and sum(images.values()) >= image_cap))

    finished: set[int] = set()

    def finish(i: int) -> None:
        finished.add(i)
        stats[i].save(files[i], {"images": str(images[i]), "fingerprint": fingerprint, "pass": pass_name,
                                 "paths": str(len(chunks[i]))})

    try:
        if todo and not capped():
            pending = pd.concat([chunks[i].assign(chunk=i) for i in todo], ignore_index=True)
            current = None
            for chunk, part, n_img in _stream(cfg, collection.source, pending, dim, basis, backbone_tensors):
                if chunk in finished:
                    raise RuntimeError(f"statistics of chunk {chunk} arrived after it was saved; the pipeline "
                                       "must keep the order of its rows (DataContext.preserve_order)")
                if current is not None and chunk != current:
                    finish(current)  # order is kept: a later chunk's rows mean this one has ended
                current = chunk
                stats.setdefault(chunk, PatchStats(dim)).merge(part)
                images[chunk] = images.get(chunk, 0) + n_img
                bar.update(n_img, part.n)
                if capped():
                    current = None  # cut short: not a finished chunk
                    break
            if current is not None:
                finish(current)
    finally:
        bar.close()
    merged = PatchStats.merged([stats[i] for i in sorted(stats)] or [PatchStats(dim)])
    return merged, sum(images.values())


def fit_pca(cfg: JobConfig, progress: bool = True) -> FeaturesOutcome:
    """Run the collection of ``cfg`` through the backbone and solve its PCA (see the module); the bundle is
    written to ``<task.output>/bundle``. Nothing is logged (:func:`publish_features` does)."""
    from prism.data.collection import list_collection
    from prism.engine.driver import resolve_img_size
    from prism.runtime.ray_cluster import ensure_ray
    from prism.tasks.features.artifact import pca_to_bytes
    from prism.tasks.features.source import adopt_source_backbone, tensors_to_bytes

    t0 = time.perf_counter()
    cfg, adapted = adopt_source_backbone(resolve_img_size(cfg))
    adapted_bytes = tensors_to_bytes(adapted) if adapted else None
    collection = list_collection(cfg)
    backbone = _describe_backbone(cfg)
    print(f"[prism] {collection.describe()}; backbone {backbone['name']} at {backbone['img_size']} px "
          f"({backbone['grid'][0]}×{backbone['grid'][1]} patches × {backbone['embed_dim']})", flush=True)
    ensure_ray()
    k = min(cfg.task.components, backbone["embed_dim"])
    if adapted:
        print(f"[prism] the backbone as {cfg.task.lora_from} adapted it ({len(adapted)} tensors)", flush=True)
    main, images = _pass(cfg, collection, backbone, "main", None, progress, adapted_bytes)
    basis = main.pca(k)
    timings = {"main_s": time.perf_counter() - t0}
    fg = None
    if cfg.task.foreground is not None:
        t1 = time.perf_counter()
        files = pca_to_bytes(basis, None, {})
        fg_stats, _ = _pass(cfg, collection, backbone, "foreground", files, progress, adapted_bytes,
                            image_cap=images if collection.source == "video" and cfg.task.extract.max_samples
                            else None)
        if fg_stats.n < 2:
            raise ValueError(f"the foreground threshold {cfg.task.foreground.threshold} left {fg_stats.n} "
                             "patch(es): lower it (or set task.foreground.invert)")
        fg = fg_stats.pca(k)
        timings["foreground_s"] = time.perf_counter() - t1
    meta = _metadata(cfg, backbone, collection, images, main.n, fg)
    bundle = write_features_bundle(cfg, basis, fg, meta, Path(cfg.task.output) / "bundle", adapted)
    timings["total_s"] = time.perf_counter() - t0
    return FeaturesOutcome(basis, fg, meta, bundle, timings=timings)


def _metadata(cfg: JobConfig, backbone: dict[str, Any], collection, images: int, patches: int,
              fg: PCABasis | None) -> dict[str, Any]:
    totals = {"images": images, "patches": patches, **{k: v for k, v in collection.info.items() if k != "images"}}
    if fg is not None:
        totals["foreground_patches"] = fg.count
    return {"backbone": {k: backbone[k] for k in ("name", "weights_sha256", "img_size", "patch_size", "grid",
                                                  "embed_dim")},
            "patches_per_image": backbone["patches_per_image"], "totals": totals,
            "source": collection.source, "root": None if collection.root is None else str(collection.root),
            "max_samples": cfg.task.extract.max_samples, "created": datetime.now(UTC).isoformat()}


def write_features_bundle(cfg: JobConfig, basis: PCABasis, fg: PCABasis | None, meta: dict[str, Any],
                          path: Path, adapted: dict | None = None) -> Path:
    """The model bundle of a fitted basis: the backbone recorded by hash, with the ``adapted`` tensors of
    ``task.lora_from`` (if any) as its own weights."""
    from prism.engine.model import build_model
    from prism.inference.bundle import write_bundle
    from prism.tasks import build_task
    from prism.tasks.features.source import load_backbone_tensors

    task = build_task(cfg)
    model = build_model(cfg, task).eval()
    load_backbone_tensors(model, adapted or {})
    task.set_basis(model, basis, fg, meta)
    ev = basis.explained_variance_ratio
    metrics = {"pca/explained_variance_ratio": float(ev.sum()), "pca/patches": basis.count,
               **{f"pca/explained_variance_ratio/{i}": float(v) for i, v in enumerate(ev)}}
    return write_bundle(path, cfg, task, model, sorted(adapted or {}), metrics=metrics)


def merge_partials(cfg: JobConfig, files: list[Path], progress: bool = False) -> FeaturesOutcome:
    """Solve the PCA of main-pass statistics files from separate runs (same backbone, weights and size:
    their fingerprints must agree) and write the bundle, as :func:`fit_pca` would have for all of them."""
    if not files:
        raise ValueError("give the statistics files to merge (<output>/partials/main-*.safetensors)")
    if cfg.task.foreground is not None:
        raise ValueError("merge solves the main PCA only; a foreground PCA needs its second pass over the images "
                         "(set task.foreground=null here, or run `prism features pca` on the whole collection)")
    by_chunk = {}  # a file's name is its pass, chunk index and the digest of its images: one chunk, one name
    for f in files:
        by_chunk.setdefault(Path(f).name, Path(f))
    if len(by_chunk) < len(files):
        print(f"[prism] {len(files) - len(by_chunk)} statistics file(s) of chunks given already (same name: the "
              "same images), merged once", flush=True)
    files = list(by_chunk.values())
    from prism.engine.driver import resolve_img_size
    from prism.tasks.features.source import adopt_source_backbone, tensors_to_bytes

    cfg, adapted = adopt_source_backbone(resolve_img_size(cfg))
    backbone = _describe_backbone(cfg)
    want = run_fingerprint(cfg, backbone["weights_sha256"], "main", tensors_to_bytes(adapted) if adapted else None)
    parts, images = [], 0
    for f in files:
        stats, meta = PatchStats.load(f)
        if meta.get("pass") != "main":
            raise ValueError(f"{f}: statistics of the {meta.get('pass')!r} pass; merge main-pass files")
        if meta.get("fingerprint") != want:
            raise ValueError(f"{f}: computed with another backbone, weights, img_size or video setting than this "
                             f"job (fingerprint {meta.get('fingerprint')} vs {want})")
        parts.append(stats)
        images += int(meta.get("images", 0))
    merged = PatchStats.merged(parts)
    basis = merged.pca(min(cfg.task.components, backbone["embed_dim"]))
    import pandas as pd

    from prism.data.collection import Collection

    meta = _metadata(cfg, backbone, Collection("merged", pd.DataFrame(), None, {"files": len(files)}), images,
                     merged.n, None)
    bundle = write_features_bundle(cfg, basis, None, meta, Path(cfg.task.output) / "bundle", adapted)
    return FeaturesOutcome(basis, None, meta, bundle)


def publish_features(cfg: JobConfig, outcome: FeaturesOutcome, job_file: str | None = None) -> FeaturesOutcome:
    """Log the run (config, totals, explained variance, a scree plot, the bundle) to MLflow and, with
    ``tracking.model_name``, register the bundle as a new version and point ``tracking.alias`` at it."""
    import mlflow

    from prism.inference.publish import register_bundle
    from prism.tracking import configure_tracking, get_or_create_experiment, log_figure, log_resolved_config
    from prism.tracking.registry import set_alias

    configure_tracking(cfg.tracking.tracking_uri)
    experiment_id = get_or_create_experiment(cfg.tracking.experiment, cfg.tracking.artifact_location)
    with mlflow.start_run(experiment_id=experiment_id, run_name=cfg.tracking.run_name) as run:
        log_resolved_config(cfg.model_dump(mode="json"))
        mlflow.set_tags({"prism.task": "features", "prism.backbone": cfg.backbone.name,
                         "prism.job_file": job_file or ""})
        totals = outcome.meta["totals"]
        mlflow.log_metrics({f"totals/{k}": float(v) for k, v in totals.items()})
        metrics = json.loads((outcome.bundle / "metrics.json").read_text())
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.log_metrics({f"time/{k}": v for k, v in outcome.timings.items()})
        mlflow.log_dict(outcome.meta, "pca/pca.json")
        log_figure(scree_plot(outcome.basis), "pca/explained_variance.png")
        outcome.run_id = run.info.run_id
        if cfg.tracking.model_name:
            mv = register_bundle(outcome.bundle, cfg.tracking.model_name, run_id=run.info.run_id,
                                 metric="pca/explained_variance_ratio",
                                 value=metrics["pca/explained_variance_ratio"], mode="max")
            set_alias(cfg.tracking.model_name, cfg.tracking.alias, mv.version)  # the newest fit is the one
            outcome.model_version = str(mv.version)
    return outcome


def scree_plot(basis: PCABasis):
    """The explained variance ratio per component and its running sum (a matplotlib Figure)."""
    from matplotlib.figure import Figure

    ev = basis.explained_variance_ratio.numpy()
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.bar(np.arange(len(ev)), ev, label="per component")
    ax.plot(np.arange(len(ev)), np.cumsum(ev), "o-", color="C1", label="cumulative")
    ax.set_xlabel("component")
    ax.set_ylabel("explained variance ratio")
    ax.set_ylim(0, 1)
    ax.set_title(f"PCA of {basis.count:,} patches")
    ax.legend()
    fig.tight_layout()
    return fig
