"""WebDataset shards: Prism's ``data.source: webdataset`` vs. ``webdataset`` + ``DataLoader``, as shards grow.

Both sides read the same tar shards of 64 px PNG sketches (Prism's QuickDraw converter,
``prism.data.shards.quickdraw_to_shards``, over drawings of ``prism.data.synth.write_sketch_ndjson``), the
first 8, 32 and 128 of them (same samples per shard), decode, resize to the sketches job's model size and
batch by 64, to the end of the shards:

- *Prism, training dataset*: ``prism.data.webdataset.build_webdataset(cfg, task, size).train`` — shard
  check, ``ray.data.read_webdataset``, shard shuffle, per-row augmentation seed, ``DecodeShardSamples``
  in ``map_batches`` (augmentation neutral: crop scale and ratio 1, no flip or brightness, so the work is a
  whole-image resize), consumed as ``prism.engine.loop`` does: ``iter_torch_batches(batch_size=64,
  collate_fn=task.collate_fn(), local_shuffle_buffer_size=data.shuffle_buffer)``.
- *Prism, validation dataset*: ``….val`` of the same call (decode → bicubic resize, nothing random),
  consumed with ``iter_torch_batches(batch_size=64, collate_fn=task.collate_fn())``.
- *Reference*: ``webdataset.WebDataset(shards, shardshuffle=…).shuffle(256).decode("pil")`` → PIL bicubic
  resize, in a ``torch.utils.data.DataLoader(num_workers=2, batch_size=64)``.

Reported: images/s of each (the sides alternate, ``--repeats`` times each per shard count, median), and
the peak RSS of each side's whole process tree, sampled every 0.1 s in a background thread: for Prism this
process plus every Ray process (GCS, raylet, agents, workers), for the reference this process plus its
DataLoader workers; the shard counts alternate within each repeat, so growth over the run is not taken for
growth with the shard count. Writes ``bench/results/shard_throughput.json``.

    python bench/shard_throughput.py            # 8 / 32 / 128 shards of 80 samples (~4 min on 2 CPUs)
    python bench/shard_throughput.py --quick    # 8 / 32 shards of 40 samples (~1.5 min)
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import (
    CACHE,
    ROOT,
    SAMPLE_EVERY_S,
    BenchResult,
    Row,
    TreeRss,
    bench_parser,
    git_revision,
    write_result,
)
from prism.config import load_config

BATCH = 64
IMAGE_PX = 64  # the rendered sketches
SHUFFLE_BUFFER = 256  # the reference's sample shuffle buffer (Prism: data.shuffle_buffer, 256 by default)
MIB = 2**20
RSS_GROWTH_TARGET = 1.2  # peak RSS at the most shards ≤ 1.2 × the peak at 8 shards
SIDES = ("prism_train", "prism_val", "reference")


# -- fixture ---------------------------------------------------------------------------------------

def make_shards(n_shards: int, per_shard: int, classes: list[str]) -> list[Path]:
    """``n_shards`` tar shards of ``per_shard`` 64 px PNG sketches each, cached under ``bench/.cache``.

    Written by Prism's own converter (``prism data quickdraw``) from synthetic QuickDraw ``.ndjson``
    drawings; a run uses the first 8, 32, … of them.
    """
    from prism.data.shards import quickdraw_to_shards
    from prism.data.synth import write_sketch_ndjson

    out = CACHE / f"shards-sketch{IMAGE_PX}-{n_shards}x{per_shard}"
    shards = sorted(out.glob("train-*.tar"))
    if len(shards) == n_shards and (out / "classes.txt").is_file():
        return shards
    total = n_shards * per_shard
    if total % len(classes):
        raise ValueError(f"{n_shards} x {per_shard} samples do not split evenly over {len(classes)} classes")
    with tempfile.TemporaryDirectory() as tmp:
        write_sketch_ndjson(tmp, classes, per_class=total // len(classes))
        written = quickdraw_to_shards(tmp, out, classes, per_class=total // len(classes), test_fraction=0.0,
                                      size=IMAGE_PX, per_shard=per_shard, progress=False)
    shards = written["train"].shards
    if len(shards) != n_shards:
        raise RuntimeError(f"expected {n_shards} shards, the converter wrote {len(shards)}")
    return shards


# -- memory ----------------------------------------------------------------------------------------

def _drain(batches, count, exclude: set[int] | None = None) -> dict[str, float]:
    """Iterate ``batches()`` to the end, timing it from building the iterator; RSS sampled throughout."""
    with TreeRss(exclude) as rss:
        t0 = time.perf_counter()
        n = 0
        for batch in batches():
            if not n:
                rss.relist_soon()
            n += count(batch)
        seconds = time.perf_counter() - t0
    driver_end = {f"driver_end_{k}_mib": v for k, v in _driver_rss_parts().items()}
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds, "peak_rss_mib": rss.peak / MIB,
            "start_rss_mib": rss.start_rss / MIB, "peak_driver_rss_mib": rss.peak_driver / MIB,
            "peak_anon_rss_mib": rss.peak_anon / MIB, "rss_samples": rss.samples, **driver_end}


def _driver_rss_parts() -> dict[str, float]:
    """This process's RSS split as ``/proc/self/status`` gives it (Linux): ``anon`` (heap), ``file``
    (mapped libraries), ``shmem`` (shared memory: Ray's object store, DataLoader tensors); empty elsewhere."""
    parts = {"RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem"}
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in parts:
            out[parts[key]] = int(value.split()[0]) / 1024  # kB → MiB
    return out


def job_config(shards: list[Path]):
    """The sketches job reading ``shards`` as ``data.source: webdataset``, augmentation neutral.

    The same shards are given as ``data.webdataset.val``, so both datasets hold every sample (no hash split).
    """
    pattern = _pattern(shards)
    return load_config(ROOT / "jobs" / "sketches.yaml", [
        "data.source=webdataset", f"data.webdataset.train={pattern}", f"data.webdataset.val={pattern}",
        "data.augment.crop_scale=[1.0,1.0]", "data.augment.crop_ratio=[1.0,1.0]", "data.augment.hflip=false",
        "data.augment.brightness=0.0", "data.progress_bars=false"])


def _pattern(shards: list[Path]) -> str:
    """``train-{000000..000007}.tar`` for the first shards of a set (what a job would write)."""
    from prism.data.shards import ShardSet

    return ShardSet(list(shards), 0).pattern


def prism_epoch(shards: list[Path], split: str, epoch: int) -> dict[str, float]:
    """One pass over Prism's ``split`` (``train`` / ``val``) dataset of ``shards``, built from scratch (shard
    expansion and check included), consumed as ``prism.engine.loop`` consumes it."""
    from prism.data.webdataset import build_webdataset
    from prism.engine.loop import shuffle_seed
    from prism.tasks import build_task

    cfg = job_config(shards)
    task = build_task(cfg)  # the config and task, as a job has them before it builds its datasets
    holder: dict[str, float] = {}

    def batches():
        t0 = time.perf_counter()
        data = build_webdataset(cfg, task, cfg.backbone.img_size)
        holder["build_s"] = time.perf_counter() - t0
        kwargs = {}
        if split == "train" and cfg.data.shuffle_buffer:
            kwargs = {"local_shuffle_buffer_size": cfg.data.shuffle_buffer,
                      "local_shuffle_seed": shuffle_seed(cfg.train.seed, epoch, 0)}
        ds = data.train if split == "train" else data.val
        return ds.iter_torch_batches(batch_size=BATCH, collate_fn=task.collate_fn(), device="cpu", **kwargs)

    out = _drain(batches, lambda b: len(b[0]["image"]))
    return {**out, "build_webdataset_s": holder["build_s"]}


class _Resize:
    """A decoded ``(PIL image, class)`` sample → ``(uint8 (S, S, 3), class)``, bicubic like Prism's eval."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, sample):
        from PIL import Image

        img, cls = sample
        return np.array(img.resize((self.size, self.size), Image.BICUBIC), dtype=np.uint8), int(cls)


def reference_epoch(shards: list[Path], size: int, epoch: int, ray_pids: set[int]) -> dict[str, float]:
    """One pass of ``webdataset`` + ``DataLoader(num_workers=2)`` over ``shards`` (workers started inside the
    timed span); Ray's processes are left out of its RSS."""
    import webdataset as wds

    ds = (wds.WebDataset([str(s) for s in shards], shardshuffle=len(shards), seed=epoch, empty_check=False)
          .shuffle(SHUFFLE_BUFFER).decode("pil").to_tuple("png", "cls").map(_Resize(size)))
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, num_workers=2)
    return _drain(lambda: iter(loader), lambda b: len(b[0]), exclude=ray_pids)


# -- driver ----------------------------------------------------------------------------------------

def _ray_children() -> set[int]:
    """Pids of this process's direct children once Ray has started (GCS, raylet, …: Ray's subtrees)."""
    import psutil

    return {p.pid for p in psutil.Process().children()}


def _pid() -> int:
    return os.getpid()


def _check_ray_workers_in_tree(ray_pids: set[int]) -> None:
    """Ray's worker processes are descendants of the Ray processes that :class:`TreeRss` counts."""
    import psutil
    import ray

    pid = ray.get(ray.remote(num_cpus=0)(_pid).remote())
    tree = {q.pid for p in ray_pids if psutil.pid_exists(p)
            for q in psutil.Process(p).children(recursive=True)}
    if pid not in tree:
        raise RuntimeError(f"Ray worker {pid} is outside the process tree whose RSS is sampled")


def _at_rest() -> dict[str, float]:
    """RSS between passes: the whole tree (this process + Ray) and this process alone, in MiB."""
    rss = TreeRss()
    tree = rss.sample()
    parts = {f"driver_{k}_mib": v for k, v in _driver_rss_parts().items()}
    return {"tree_mib": tree / MIB, "driver_mib": rss.peak_driver / MIB, **parts}


def _line(n: int, side: str, r: dict[str, float]) -> str:
    return (f"{n:>4} shards {side:<12} {r['images']:>6} images {r['images_per_s']:8.1f} img/s  "
            f"peak RSS {r['peak_rss_mib']:7.0f} MiB (driver {r['peak_driver_rss_mib']:.0f}, "
            f"start {r['start_rss_mib']:.0f})")


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=None, help="passes per side and shard count "
                        "(default 3; --quick: 2)")
    parser.add_argument("--per-shard", type=int, default=None,
                        help="samples per shard (default 80; --quick: 40)")
    args = parser.parse_args()
    start = time.perf_counter()
    counts = [8, 32] if args.quick else [8, 32, 128]
    per_shard = args.per_shard or (40 if args.quick else 80)
    repeats = args.repeats or (2 if args.quick else 3)

    cfg0 = load_config(ROOT / "jobs" / "sketches.yaml")
    classes, size = list(cfg0.task.classes), cfg0.backbone.img_size
    all_shards = make_shards(max(counts), per_shard, classes)
    os.chdir(tempfile.mkdtemp(prefix="prism-bench-shards-"))

    import ray

    from prism.runtime.console import quiet_ray_data

    quiet_ray_data()  # as prism.runtime.ray_cluster.ensure_ray: Ray Data's INFO lines off the console
    ctx = ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    print(f"Ray at {ctx.address_info['gcs_address']} (this run's own local cluster)")
    ray_pids = _ray_children()
    _check_ray_workers_in_tree(ray_pids)
    data_ctx = ray.data.DataContext.get_current()
    data_ctx.enable_progress_bars = False
    data_ctx.enable_operator_progress_bars = False

    # warm-up, untimed: Ray worker start-up and the imports of the decode tasks (torchvision)
    prism_epoch(all_shards[:counts[0]], "train", 0)
    reference_epoch(all_shards[:counts[0]], size, 0, ray_pids)

    rest = {"after_warmup": _at_rest()}
    runs: dict[int, dict[str, list[dict[str, float]]]] = {n: {side: [] for side in SIDES} for n in counts}
    for i in range(repeats):  # shard counts and sides alternate, so drift over the run hits every one alike
        epoch = i + 1
        for n in counts:
            shards = all_shards[:n]
            runs[n]["prism_train"].append(prism_epoch(shards, "train", epoch))
            runs[n]["prism_val"].append(prism_epoch(shards, "val", epoch))
            runs[n]["reference"].append(reference_epoch(shards, size, epoch, ray_pids))
            for side in SIDES:
                print(_line(n, side, runs[n][side][-1]), flush=True)
    for n in counts:
        seen = {r["images"] for side in runs[n].values() for r in side}
        if seen != {n * per_shard}:
            raise RuntimeError(f"{n} shards of {per_shard}: the sides saw {sorted(seen)} images")
    rest["end"] = _at_rest()
    ray.shutdown()
    print(f"measured in {time.perf_counter() - start:.0f} s (start-up included)")

    write_result(build_result(runs, rest, counts, per_shard, repeats, size, args.quick))


def build_result(runs: dict[int, dict[str, list[dict[str, float]]]], rest: dict[str, dict[str, float]],
                 counts: list[int], per_shard: int, repeats: int, size: int, quick: bool) -> BenchResult:
    """The rows, notes and details of a run: ``runs[shard count][side]`` is the list of its passes."""
    def med(n: int, side: str, key: str = "images_per_s") -> float:
        return statistics.median(r[key] for r in runs[n][side])

    def peak(n: int, side: str, key: str = "peak_rss_mib") -> float:
        return max(r[key] for r in runs[n][side])

    ref = {"reference_label": "webdataset + DataLoader(num_workers=2), PIL"}
    train = {"prism_label": "build_webdataset(...).train + iter_torch_batches (as prism.engine.loop)", **ref}
    val = {"prism_label": "build_webdataset(...).val + iter_torch_batches", **ref}
    lo, hi = counts[0], counts[-1]
    growth = {key: {side: peak(hi, side, key) / peak(lo, side, key) for side in SIDES}
              for key in ("peak_rss_mib", "peak_anon_rss_mib", "peak_driver_rss_mib")}
    rows = [Row(f"training dataset images/s, {n} shards x {per_shard}", "images/s", med(n, "prism_train"),
                med(n, "reference"), target=1.0, **train) for n in counts]
    rows += [Row(f"validation dataset images/s, {n} shards x {per_shard}", "images/s", med(n, "prism_val"),
                 med(n, "reference"), **val) for n in counts]
    rows += [Row(f"peak RSS of the process tree, {n} shards (training dataset)", "MiB",
                 peak(n, "prism_train"), peak(n, "reference"), **train) for n in counts]
    rows += [
        Row(f"peak RSS flatness: peak at {lo} / peak at {hi} shards (≥ {1 / RSS_GROWTH_TARGET:.2f} ⇔ "
            f"growth ≤ {RSS_GROWTH_TARGET}x)", "x", 1 / growth["peak_rss_mib"]["prism_train"],
            1 / growth["peak_rss_mib"]["reference"], target=round(1 / RSS_GROWTH_TARGET, 3),
            target_on="prism", **train),
        Row(f"peak anonymous RSS (shared pages left out) flatness: peak at {lo} / peak at {hi} shards", "x",
            1 / growth["peak_anon_rss_mib"]["prism_train"], 1 / growth["peak_anon_rss_mib"]["reference"],
            **train),
    ]
    a, b = rest["after_warmup"], rest["end"]
    notes = [
        "Prism: prism.data.webdataset.build_webdataset(cfg, task, size) of jobs/sketches.yaml with "
        "data.source=webdataset and the shards as both data.webdataset.train and .val (every sample in each "
        "dataset), built anew in each timed pass (brace expansion and check_shards included): "
        "read_webdataset → map_batches(DecodeShardSamples) → filter(_keep). Training dataset: shard "
        "shuffle, aug_seed column, augmentation neutral (crop scale and ratio [1, 1], no flip or brightness: "
        f"a torchvision whole-image resize), iter_torch_batches(batch_size={BATCH}, "
        "collate_fn=task.collate_fn(), local_shuffle_buffer_size=256) as prism.engine.loop; validation "
        "dataset: PIL bicubic resize, no local shuffle.",
        f"Reference: webdataset.WebDataset(shards, shardshuffle=len(shards)).shuffle({SHUFFLE_BUFFER})"
        f".decode('pil').to_tuple('png', 'cls') → PIL bicubic resize to {size} px → uint8, in "
        f"DataLoader(num_workers=2, batch_size={BATCH}).",
        f"Peak RSS: the sum over the side's process tree, sampled every {SAMPLE_EVERY_S} s, maximum over a "
        "shard count's passes. Prism: this process and every Ray process (GCS, raylet, agents, workers: "
        "the whole local cluster); reference: this process and its DataLoader workers. Pages shared "
        "between processes (fork copy-on-write, libraries, the object store's shared memory) count once "
        "per process, so the absolute figures overstate both sides; read the growth. Anonymous RSS = RSS "
        "less file-backed and shared-memory pages. MiB rows: ratio = reference / Prism (> 1: Prism uses "
        "less).",
        "Shard counts alternate within each repeat, so growth over the run is spread over every count. "
        f"At rest between passes, the process tree went from {a['tree_mib']:.0f} MiB (after the warm-up) "
        f"to {b['tree_mib']:.0f} MiB (after the last pass); this process from {a['driver_mib']:.0f} to "
        f"{b['driver_mib']:.0f} MiB, of which shared memory {a.get('driver_shmem_mib', 0):.0f} → "
        f"{b.get('driver_shmem_mib', 0):.0f} MiB (object-store pages mapped into the driver) and anonymous "
        f"{a.get('driver_anon_mib', 0):.0f} → {b.get('driver_anon_mib', 0):.0f} MiB.",
        "Before the timed passes, one untimed pass of Prism's training dataset and of the reference over "
        f"the first {lo} shards (Ray worker start-up, the decode tasks' imports).",
    ]

    def rounded(r: dict[str, float]) -> dict[str, float]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}

    return BenchResult(
        name="shard_throughput",
        title="WebDataset shards: Ray Data (data.source: webdataset) vs. webdataset + DataLoader",
        rows=rows, quick=quick, notes=notes,
        setup=f"{', '.join(map(str, counts))} shards of {per_shard} PNG sketches ({IMAGE_PX} px) → "
              f"{size} px, batch {BATCH}, median of {repeats} alternating passes per side, "
              f"{os.cpu_count()} CPUs, commit {git_revision()}",
        details={"counts": counts, "per_shard": per_shard, "repeats": repeats, "batch_size": BATCH,
                 "img_size": size, "image_px": IMAGE_PX, "shuffle_buffer": SHUFFLE_BUFFER,
                 "rss_sample_every_s": SAMPLE_EVERY_S,
                 "growth_most_vs_fewest_shards": {k: {side: round(g, 4) for side, g in v.items()}
                                                  for k, v in growth.items()},
                 "at_rest": {when: {k: round(v, 1) for k, v in r.items()} for when, r in rest.items()},
                 "runs": {str(n): {side: [rounded(r) for r in rs] for side, rs in sides.items()}
                          for n, sides in runs.items()}},
    )


if __name__ == "__main__":
    main()
