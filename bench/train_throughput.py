"""Training images/s: Ray Train fed by Ray Data vs. a plain PyTorch loop, and 2 workers vs. 1, in one run.

All sides train the same model (the job's backbone + heads, same stage plan entry) for the same epochs on
the same JPEG files with the same batch size and augmentation parameters:

- Prism: ``task.build_datasets`` (Ray Data: read, decode, augment in ``map_batches``) feeding
  ``build_trainer`` (a ``TorchTrainer`` running ``train_loop_per_worker``), 1 worker with 1 CPU;
- Prism, 2 workers: the same with ``train.num_workers=2`` and 0.5 CPU each, so both runs leave the same
  CPU share to Ray Data;
- reference: the loop one writes by hand: a ``torch.utils.data.DataLoader(num_workers=2)`` over a Dataset
  doing PIL decode → torchvision ``RandomResizedCrop`` / flip / ``ColorJitter`` → normalise, then
  forward / backward / AdamW in the main process.

Images/s counts only the training iterations of an epoch (validation and start-up excluded on every side);
epoch 1 is a warm-up and the figure is the mean of the remaining epochs. The start-up cost (Ray, workers,
first batch) is reported apart as seconds to finish the whole run.

    python bench/train_throughput.py            # 2,000 JPEGs, 4 epochs per side
    python bench/train_throughput.py --quick    # 500 JPEGs, 3 epochs per side
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _common import ROOT, BenchResult, Row, bench_parser, make_jpegs, write_result
from prism.config import JobConfig, load_config
from prism.engine.model import build_model


class TorchvisionFiles(torch.utils.data.Dataset):
    """Rows ``(path, y_<head>…)`` → ``{"image": float (3, S, S) normalised, "y_<head>": int}`` (the baseline)."""

    def __init__(self, df: pd.DataFrame, cfg: JobConfig, mean, std):
        from torchvision.transforms import v2

        a = cfg.data.augment
        size = int(cfg.backbone.img_size)
        ops: list = [v2.ToImage(), v2.RandomResizedCrop(size, scale=tuple(a.crop_scale), antialias=True)]
        if a.hflip:
            ops.append(v2.RandomHorizontalFlip())
        if a.vflip:
            ops.append(v2.RandomVerticalFlip())
        if a.brightness > 0:
            ops.append(v2.ColorJitter(brightness=a.brightness))
        ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
        self.transform = v2.Compose(ops)
        self.df = df.reset_index(drop=True)
        self.ycols = [c for c in df.columns if c.startswith("y_")]

    def __len__(self) -> int:
        return len(self.df)

    def __getitem__(self, i: int):
        from PIL import Image

        row = self.df.iloc[i]
        with Image.open(row["path"]) as img:
            x = self.transform(img.convert("RGB"))
        return {"image": x, **{c: torch.tensor(int(row[c])) for c in self.ycols}}


def plain_loop(cfg: JobConfig, train_df: pd.DataFrame, epochs: int) -> tuple[list[float], float]:
    """Per-epoch images/s of the hand-written loop, and its total wall time (seconds)."""
    from prism.adapters import apply_stage
    from prism.tasks import build_task

    t_start = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    task = build_task(cfg)
    model = build_model(cfg, task)
    opt = torch.optim.AdamW(apply_stage(model, cfg.stages[0]))
    dataset = TorchvisionFiles(train_df, cfg, model.backbone.mean, model.backbone.std)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True, num_workers=2,
                                         persistent_workers=True)
    rates = []
    for _ in range(epochs):
        model.train()
        n, t0 = 0, time.perf_counter()
        for batch in loader:
            x = batch.pop("image")
            targets = batch  # {"y_<head>": int64 (B,)}, what the task's collate_fn returns
            loss, _ = task.loss(model({"image": x}), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(x)
        rates.append(n / (time.perf_counter() - t0))
    return rates, time.perf_counter() - t_start


def ray_train(cfg: JobConfig, epochs: int, workers: int, cpus_per_worker: float) -> tuple[list[float], float]:
    """Per-epoch images/s reported by ``train_loop_per_worker``, and the wall time of the whole run."""
    from prism.engine.driver import build_trainer
    from prism.tasks import build_task

    t_start = time.perf_counter()
    task = build_task(cfg)
    data = task.build_datasets(cfg.backbone.img_size)
    with tempfile.TemporaryDirectory() as tmp:
        one = cfg.model_copy(update={
            "stages": [cfg.stages[0].model_copy(update={"epochs": epochs})],
            "train": cfg.train.model_copy(update={"storage_path": tmp, "early_stop_patience": None,
                                                  "num_workers": workers, "cpus_per_worker": cpus_per_worker}),
        })
        result = build_trainer(one, {"train": data.train, "val": data.val}).fit()
        with result.checkpoint.as_directory() as d:
            history = json.loads((Path(d) / "state.json").read_text())["history"]
    return [h["train/images_per_s"] for h in history], time.perf_counter() - t_start


def _check_collate_matches(cfg: JobConfig) -> None:
    """The baseline's inputs and targets must be what ``task.collate_fn()`` gives the Prism loop (same
    forward, same loss, same work)."""
    from prism.tasks import build_task

    task = build_task(cfg)
    batch = {"image": np.zeros((2, 8, 8, 3), dtype=np.uint8),
             **{f"y_{h}": np.zeros(2, dtype=np.int64) for h in task.label_columns()}}
    inputs, targets = task.collate_fn()(batch)
    if sorted(inputs) != ["image"]:
        raise RuntimeError(f"collate inputs {sorted(inputs)} != ['image']; update the bench")
    if sorted(targets) != sorted(f"y_{h}" for h in task.label_columns()):
        raise RuntimeError(f"collate targets {sorted(targets)} != heads {task.label_columns()}; update the bench")


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--stage", default="lora", choices=["probe", "lora", "unfreeze"],
                        help="which stage of jobs/circles.yaml to train (default: lora)")
    args = parser.parse_args()
    n, epochs = (500, 3) if args.quick else (2000, 4)
    folder = make_jpegs(n)
    work = Path(tempfile.mkdtemp(prefix="prism-bench-"))
    os.chdir(work)
    cfg = load_config(ROOT / "jobs" / "circles.yaml", [f"data.root={folder}", "data.val_fraction=0.1",
                                                        "data.check_images=false"])
    stage = next(s for s in cfg.stages if s.kind == args.stage)
    cfg = cfg.model_copy(update={"stages": [stage]})
    _check_collate_matches(cfg)

    import ray

    from prism.data import resolve_labels_csv, split_table
    from prism.data.table import read_label_table
    from prism.tasks import build_task

    task = build_task(cfg)
    table = read_label_table(resolve_labels_csv(cfg), "image", task.label_columns(), task.unknown_labels)
    rows = pd.concat([table.rows[["path"]], pd.DataFrame(task.encode_labels(table.rows))], axis=1)
    train_df, _ = split_table(rows, task.stratify_key(table.rows), cfg.data.val_fraction, cfg.data.split_seed)

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    one_rates, one_wall = ray_train(cfg, epochs, workers=1, cpus_per_worker=1.0)
    plain_rates, plain_wall = plain_loop(cfg, train_df, epochs)
    two_rates, two_wall = ray_train(cfg, epochs, workers=2, cpus_per_worker=0.5)
    ray.shutdown()

    one, two, plain = (statistics.mean(r[1:]) for r in (one_rates, two_rates, plain_rates))
    setup = (f"{cfg.backbone.name} @ {cfg.backbone.img_size}px, stage '{args.stage}', batch "
             f"{cfg.data.batch_size}/worker, {len(train_df)} JPEGs (500x375), {epochs} epochs, first excluded")
    result = BenchResult(
        name="train_throughput", title="Training throughput", quick=args.quick, setup=setup,
        rows=[
            Row("train images/s: Ray Train (1 worker) vs plain loop", "img/s", one, plain,
                "Ray Train, 1 worker × 1 CPU, Ray Data from JPEG files",
                "plain PyTorch loop, DataLoader(num_workers=2), torchvision transforms", target=0.95),
            Row("train images/s: 2 workers vs 1", "img/s", two, one,
                "Ray Train, 2 workers × 0.5 CPU (DDP, gloo)", "Ray Train, 1 worker × 1 CPU"),
            Row("wall time of the whole run incl. start-up", "s", one_wall, plain_wall,
                "Ray Train, 1 worker (Ray Data + TorchTrainer start-up included)", "plain loop"),
        ],
        notes=[
            "Ray Train sets OMP_NUM_THREADS from the worker's CPUs, so a 1-CPU worker computes on 1 torch "
            "thread while Ray Data decodes on the other core; the plain loop computes on "
            f"{torch.get_num_threads()} threads while its 2 DataLoader processes decode.",
            "images/s counts training iterations only (validation excluded) on every side.",
        ],
        details={"prism_1_worker_per_epoch": one_rates, "prism_2_workers_per_epoch": two_rates,
                 "reference_per_epoch": plain_rates, "wall_s": {"prism_1": one_wall, "prism_2": two_wall,
                                                                "reference": plain_wall}},
    )
    write_result(result)


if __name__ == "__main__":
    main()
