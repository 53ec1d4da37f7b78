"""Patch-feature extraction: Prism's Ray Data actor pipeline vs a bare timm forward loop, and its memory.

The same JPEGs (500 × 375, decoded and resized to the backbone's size the same way) through

* **Prism**: ``fit_pca`` of a features job (``jobs/faces_pca.yaml`` with the backbone overridden): Ray Data
  decodes, one backbone actor (all the machine's CPUs, or its GPU) turns each batch into float64
  statistics, the driver merges them; images/s over the steady state (first statistics row to the last)
  and over the whole call (actor start-up included);
* **reference**: a plain loop in this process — PIL decode, the same resize, ``timm.create_model`` of the
  same architecture, ``forward_features`` in batches of the same size, after one warm-up batch — on the
  same device and in the same precision (float32 on a CPU, bf16 autocast on a GPU, as ``train.amp: auto``).

Memory: the peak RSS of this process and its children (driver, Ray workers, the actor) while ``fit_pca``
runs on N and on 10 N images (tiny backbone, 112 px); flat means the ratio peak(N) / peak(10 N) stays
near 1.

    python bench/features_extract.py           # ViT-S/14 at 224 px, 384 images; memory on 100 / 1,000
    python bench/features_extract.py --quick   # 128 images; memory on 40 / 400
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import ROOT, BenchResult, Row, TreeRss, bench_parser, make_jpegs, write_result

THROUGHPUT_TARGET = 0.9
MEMORY_TARGET = 0.9
BATCH = 32
TIMM = {"dinov2_vits14": "vit_small_patch14_dinov2", "dinov2_vitb14": "vit_base_patch14_dinov2"}


def bare_loop(paths: list[Path], name: str, img: int, device: torch.device) -> float:
    """Images/s of PIL decode + resize + timm forward, batch by batch."""
    import timm
    from PIL import Image

    from prism.data.images import resize_rgb

    model = timm.create_model(TIMM[name], pretrained=False, img_size=img).eval().to(device)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device)[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225], device=device)[:, None, None]
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")  # as the job's amp: auto

    def run(batch: list[Path]) -> None:
        images = np.stack([resize_rgb(Image.open(p).convert("RGB"), img) for p in batch])
        x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div(255).sub(mean).div(std)
        with torch.inference_mode(), amp:
            model.forward_features(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    run(paths[:BATCH])  # warm-up, as the actor's first batch is outside the steady state
    t0 = time.perf_counter()
    for i in range(0, len(paths), BATCH):
        run(paths[i:i + BATCH])
    return len(paths) / (time.perf_counter() - t0)


def job(root: Path, out: Path, name: str, img: int, cpus: int):
    from prism.config import load_config

    return load_config(ROOT / "jobs" / "faces_pca.yaml", [
        f"data.root={root}", f"task.output={out}", f"backbone.name={name}", f"backbone.img_size={img}",
        f"task.extract.batch_size={BATCH}", f"task.extract.threads={cpus}", "tracking.model_name=null"])


def prism_run(cfg) -> tuple[float, float, float]:
    """(steady images/s, whole-call images/s, seconds) of fit_pca, timed from its progress bar's updates."""
    from prism.tasks.features import run as features_run

    stamps: list[tuple[float, int]] = []
    real_update = features_run._Progress.update

    def update(self, images: int, patches: int) -> None:
        stamps.append((time.perf_counter(), images))
        real_update(self, images, patches)

    features_run._Progress.update = update
    try:
        t0 = time.perf_counter()
        out = features_run.fit_pca(cfg, progress=False)
        wall = time.perf_counter() - t0
    finally:
        features_run._Progress.update = real_update
    n = out.meta["totals"]["images"]
    first_t, first_n = stamps[0]
    steady = (n - first_n) / max(1e-9, stamps[-1][0] - first_t)
    return steady, n / wall, wall


def peak_rss(cfg) -> float:
    """Peak MiB of this process tree while fit_pca runs."""
    from prism.tasks.features.run import fit_pca

    with TreeRss() as rss:
        fit_pca(cfg, progress=False)
    return rss.peak / 2**20


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--backbone", default="dinov2_vits14", choices=sorted(TIMM))
    parser.add_argument("--img-size", type=int, default=224)
    args = parser.parse_args()
    import ray

    from prism.runtime.ray_cluster import ensure_ray

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cpus = os.cpu_count() or 1
    n = 128 if args.quick else 384  # batches of 32: the steady state spans all but the first
    small, big = (40, 400) if args.quick else (100, 1000)
    images = make_jpegs(max(n, big))
    paths = sorted(images.glob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sub = tmp / "n"
        sub.mkdir()
        for p in paths[:n]:
            (sub / p.name).symlink_to(p)
        ensure_ray()
        ref = bare_loop(paths[:n], args.backbone, args.img_size, device)
        steady, whole, wall = prism_run(job(sub, tmp / "run", args.backbone, args.img_size, cpus))
        mem = {}
        for count in (small, big):
            folder = tmp / f"m{count}"
            folder.mkdir()
            for p in paths[:count]:
                (folder / p.name).symlink_to(p)
            mem[count] = peak_rss(job(folder, tmp / f"mrun{count}", "dinov2_tiny", 112, cpus))
        ray.shutdown()
    short = f"{args.backbone} {args.img_size} px"
    rows = [Row(f"extract {n} images, {short} (steady)", "img/s", steady, ref, reference_label="bare timm loop",
                target=THROUGHPUT_TARGET),
            Row(f"extract {n} images, {short} (whole call)", "img/s", whole, ref, reference_label="bare timm loop"),
            Row(f"peak RSS, {small} vs {big} images", "MiB", mem[big], mem[small],
                prism_label=f"{big} images", reference_label=f"{small} images", target=MEMORY_TARGET)]
    setup = f"{device}, {cpus} CPUs, batch {BATCH}, one actor ({cpus} torch threads on a CPU)"
    notes = [f"fit_pca wall {wall:.1f} s for {n} images (actor start-up and Ray Data planning included)"]
    write_result(BenchResult(name="features_extract", title="Patch-feature extraction: actor pipeline vs bare loop",
                             rows=rows, quick=args.quick, setup=setup, notes=notes,
                             details={"peak_mib": mem, "wall_s": wall}))
    for note in notes:
        print(f"  {note}")


if __name__ == "__main__":
    main()
