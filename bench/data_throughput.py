"""Eval-data images/s: Prism's Ray Data pipeline vs. a plain ``DataLoader``, side by side on the same JPEGs.

Prism's side is what ``prism.data.build_datasets`` builds for the validation split (read + decode + bicubic
resize in Ray Data ``map_batches``), consumed with ``iter_torch_batches(batch_size=32,
collate_fn=task.collate_fn())`` and normalised with ``prism.engine.inputs.model_inputs`` (the backbone's
mean and std), exactly as training's validation consumes it. The reference is a
``torch.utils.data.DataLoader(num_workers=2, batch_size=32)`` over a ``Dataset`` doing PIL open → RGB →
bicubic resize → tensor → normalise (same size, mean and std) on the same files.

Each epoch is timed from building the iterator to the last normalised batch (nothing excluded); the
steady-state rate leaves out the first batch, and the time to first batch is reported on its own. The two
sides alternate, ``--repeats`` times each, and the median is reported. Writes
``bench/results/data_throughput.json``.

    python bench/data_throughput.py            # ~2,000 JPEGs (500 x 375) → 224 px, 3 repeats per side
    python bench/data_throughput.py --quick    # ~500 JPEGs (about a minute)
    python bench/data_throughput.py --stats    # also print Ray Data's per-operator stats of each epoch
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import pandas as pd
import torch

from _common import ROOT, BenchResult, Row, bench_parser, git_revision, make_jpegs, write_result
from prism.config import load_config

BATCH = 32
IMG_SIZE = 224
VAL_FRACTION = 0.98  # nearly every file lands in the validation split that is measured


class ReferenceDataset(torch.utils.data.Dataset):
    """Paths → normalised ``float32 (3, S, S)``: PIL open → RGB → bicubic resize → tensor → normalise."""

    def __init__(self, paths: list[str], size: int, mean, std):
        from torchvision import transforms

        self.paths = paths
        self.size = size
        self.tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            rgb = img.convert("RGB").resize((self.size, self.size), Image.BICUBIC)
        return self.tf(rgb)


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and every descendant.

    Descendants are Ray's own processes and workers (alive) and DataLoader workers (reaped: counted in their
    parent's ``children_*`` times).
    """
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:  # exited in between
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _epoch(batches, to_input) -> dict[str, float]:
    """Drain ``batches()`` (an iterator factory), timing from building it to the last batch."""
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    first = None
    n = n_first = 0
    for batch in batches():
        x = to_input(batch)
        n += len(x)
        if first is None:
            first, n_first = time.perf_counter(), len(x)
    end = time.perf_counter()
    total = end - t0
    cpu_ms = 1e3 * (cpu_seconds() - cpu0) / max(n, 1)
    return {"images": n, "seconds": total, "images_per_s": n / total, "first_batch_s": first - t0,
            "steady_images_per_s": (n - n_first) / max(end - first, 1e-9), "cpu_ms_per_image": cpu_ms}


def prism_epoch(cfg, task, mean, std, stats: bool) -> dict[str, float]:
    """One pass over Prism's validation dataset, collated and normalised as training's validation does."""
    from prism.data import build_datasets
    from prism.engine.inputs import model_inputs

    t0 = time.perf_counter()
    val = build_datasets(cfg, task, IMG_SIZE).val
    build_s = time.perf_counter() - t0
    cpu = torch.device("cpu")
    out = _epoch(lambda: val.iter_torch_batches(batch_size=BATCH, collate_fn=task.collate_fn(), device="cpu"),
                 lambda b: model_inputs(b[0], cpu, mean, std)["image"])
    if stats:
        print(val.stats())
    return {**out, "build_datasets_s": build_s}


def reference_epoch(paths: list[str], mean, std) -> dict[str, float]:
    """One pass of a plain ``DataLoader(num_workers=2)`` (workers started inside the timed span)."""
    loader = torch.utils.data.DataLoader(ReferenceDataset(paths, IMG_SIZE, mean, std), batch_size=BATCH,
                                         num_workers=2)
    return _epoch(lambda: iter(loader), lambda b: b)


def backbone_norm(cfg, task) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``mean`` / ``std`` the job's model normalises with (``model.backbone.mean`` / ``.std``), from a
    shapes-only build of the model on the meta device (no weights, no memory)."""
    from prism.engine.model import build_model

    with torch.device("meta"):
        model = build_model(cfg, task, weights=False)
    return tuple(model.backbone.mean), tuple(model.backbone.std)


def _val_paths(cfg, task) -> list[str]:
    """The files of the validation split, found the way ``build_datasets`` finds them."""
    from prism.data import resolve_labels_csv, split_table
    from prism.data.table import read_label_table

    table = read_label_table(resolve_labels_csv(cfg), cfg.data.image_column, task.label_columns(),
                             task.unknown_labels)
    rows = pd.concat([table.rows[["path"]], pd.DataFrame(task.encode_labels(table.rows))], axis=1)
    _, val = split_table(rows, task.stratify_key(table.rows), cfg.data.val_fraction, cfg.data.split_seed)
    return [str(p) for p in val["path"]]


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=None, help="epochs per side (default 3)")
    parser.add_argument("--stats", action="store_true", help="print Ray Data stats after each Prism epoch")
    args = parser.parse_args()
    n_files = 500 if args.quick else 2000
    repeats = args.repeats or 3
    folder = make_jpegs(n_files)
    os.chdir(tempfile.mkdtemp(prefix="prism-bench-data-"))

    import ray

    from prism.tasks import build_task

    cfg = load_config(ROOT / "jobs" / "circles.yaml", [
        f"data.root={folder}", f"data.val_fraction={VAL_FRACTION}", "data.check_images=false",
        "data.progress_bars=false", f"backbone.img_size={IMG_SIZE}"])
    task = build_task(cfg)
    paths = _val_paths(cfg, task)
    mean, std = backbone_norm(cfg, task)

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False

    runs: dict[str, list[dict[str, float]]] = {"prism": [], "reference": []}
    for i in range(repeats):  # alternate, so drift on a shared machine hits both sides alike
        runs["prism"].append(prism_epoch(cfg, task, mean, std, args.stats))
        runs["reference"].append(reference_epoch(paths, mean, std))
        for side in runs:
            r = runs[side][-1]
            print(f"repeat {i + 1}/{repeats} {side:<9} {r['images']} images  {r['images_per_s']:7.1f} img/s  "
                  f"steady {r['steady_images_per_s']:7.1f} img/s  first batch {r['first_batch_s']:.2f} s  "
                  f"CPU {r['cpu_ms_per_image']:.2f} ms/image")
    ray.shutdown()
    n = runs["prism"][0]["images"]
    if any(r["images"] != n for side in runs.values() for r in side) or n != len(paths):
        raise RuntimeError(f"the two sides saw different image counts: {runs}")

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[side])

    labels = {"prism_label": "Ray Data (build_datasets val) + collate_fn + model_inputs",
              "reference_label": "DataLoader(num_workers=2), PIL + torchvision"}
    what = f"{n} JPEGs 500x375 → {IMG_SIZE} px"
    rows = [
        Row(f"eval data images/s, whole epoch ({what})", "images/s", med("prism", "images_per_s"),
            med("reference", "images_per_s"), target=1.0, **labels),
        Row("eval data images/s, steady state (first batch excluded)", "images/s",
            med("prism", "steady_images_per_s"), med("reference", "steady_images_per_s"), target=1.0, **labels),
        Row("time to first batch", "s", med("prism", "first_batch_s"), med("reference", "first_batch_s"),
            **labels),
        Row("CPU time per image, all processes (informative)", "ms", med("prism", "cpu_ms_per_image"),
            med("reference", "cpu_ms_per_image"), **labels),
    ]
    result = BenchResult(
        name="data_throughput", title="Eval data pipeline: Ray Data vs. DataLoader", rows=rows, quick=args.quick,
        setup=f"{n} images, batch {BATCH}, median of {repeats} alternating epochs per side, "
              f"{os.cpu_count()} CPUs, commit {git_revision()}",
        notes=[
            "Prism: the validation dataset of prism.data.build_datasets(cfg, task, 224) — the split's rows as a "
            f"Ray dataset → map_batches(DecodeImages(224), batch_size=data.map_batch_size="
            f"{cfg.data.map_batch_size}) (full-resolution PIL decode → bicubic resize → uint8, as the Predictor) "
            f"— consumed with iter_torch_batches(batch_size={BATCH}, collate_fn=task.collate_fn()) and normalised in "
            "the consuming process with prism.engine.inputs.model_inputs (uint8 BHWC → float BCHW, the backbone's "
            "mean and std), as training's validation does.",
            f"Reference: torch DataLoader(num_workers=2, batch_size={BATCH}) over a Dataset doing PIL open → "
            f"convert('RGB') → resize(({IMG_SIZE}, {IMG_SIZE}), BICUBIC) → ToTensor → Normalize(mean, std) "
            "in the workers.",
            "Both: the same files (the validation split), same size, mean and std; Ray started with "
            "num_cpus=os.cpu_count(); each epoch timed from building the iterator (Ray Data execution / "
            "DataLoader worker start) to the last normalised batch.",
            "The first Ray epoch also pays Ray worker start-up and imports; the median of the repeats "
            "reflects a warm pool. details.*_per_repeat.cpu_ms_per_image is the CPU time of this process and "
            "all its descendants (Ray's processes and workers, DataLoader workers) per image: less sensitive "
            "to other load on the machine than the wall-clock rates.",
        ],
        details={"repeats": repeats, "n_files": n_files, "n_images": n, "batch_size": BATCH,
                 "img_size": IMG_SIZE, "map_batch_size": cfg.data.map_batch_size, "mean": list(mean),
                 "std": list(std),
                 "median_cpu_ms_per_image": {side: round(med(side, "cpu_ms_per_image"), 3) for side in runs},
                 "prism_per_repeat": [{k: round(v, 4) for k, v in r.items()} for r in runs["prism"]],
                 "reference_per_repeat": [{k: round(v, 4) for k, v in r.items()} for r in runs["reference"]]},
    )
    write_result(result)


if __name__ == "__main__":
    main()
