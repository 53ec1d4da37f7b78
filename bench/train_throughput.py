"""Training images/s: one Ray Train worker fed by Ray Data vs. a plain PyTorch loop, side by side.

Both train the same model (the job's backbone + heads, same stage) on the same image files with the same
batch size and augmentation; the plain loop reads them with a ``torch.utils.data.DataLoader``. Epoch 1 of
each is a warm-up; the figure is images/s over the remaining epochs. Prints a JSON line and writes
``bench/results/train_throughput.json``.

    python bench/train_throughput.py            # 600 images, 4 epochs each
    python bench/train_throughput.py --quick    # 200 images, 3 epochs each
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from prism.config import load_config

ROOT = Path(__file__).resolve().parents[1]


class FileDataset(torch.utils.data.Dataset):
    """Rows of (path, targets) → decoded, augmented ``uint8 (S, S, 3)`` + targets (the plain baseline)."""

    def __init__(self, df: pd.DataFrame, decode):
        self.df = df.reset_index(drop=True)
        self.decode = decode
        self.ycols = [c for c in df.columns if c.startswith("y_")]

    def __len__(self) -> int:
        return len(self.df)

    def __getitem__(self, i: int):
        row = self.df.iloc[i]
        img = self.decode({"path": np.array([row["path"]], dtype=object)})["image"][0]
        return {"image": torch.from_numpy(img), **{c: torch.tensor(int(row[c])) for c in self.ycols}}


def plain_loop(cfg, train_df: pd.DataFrame, epochs: int) -> list[float]:
    from prism.adapters import apply_stage
    from prism.data import DecodeImages
    from prism.tasks import build_task

    a = cfg.data.augment
    decode = DecodeImages(cfg.backbone.img_size, train=True, hflip=a.hflip, vflip=a.vflip, rot90=a.rot90,
                          crop_scale=a.crop_scale, brightness=a.brightness)
    loader = torch.utils.data.DataLoader(FileDataset(train_df, decode), batch_size=cfg.data.batch_size,
                                         shuffle=True, num_workers=2, persistent_workers=True)
    torch.manual_seed(0)
    task = build_task(cfg)
    model = task.build_model()
    opt = torch.optim.AdamW(apply_stage(model, cfg.stages[0]))
    device = torch.device("cpu")
    rates = []
    for _ in range(epochs):
        model.train()
        n, t0 = 0, time.perf_counter()
        for batch in loader:
            x, y = task.collate(batch, device)
            loss, _ = task.loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(x)
        rates.append(n / (time.perf_counter() - t0))
    return rates


def ray_train(cfg, epochs: int) -> list[float]:
    import ray

    from prism.tasks import build_task
    from prism.train.driver import build_trainer

    task = build_task(cfg)
    data = task.build_datasets(cfg.backbone.img_size)
    with tempfile.TemporaryDirectory() as tmp:
        one = cfg.model_copy(update={
            "stages": [cfg.stages[0].model_copy(update={"epochs": epochs})],
            "train": cfg.train.model_copy(update={"storage_path": tmp, "early_stop_patience": None}),
        })
        result = build_trainer(one, {"train": data.train, "val": data.val}).fit()
        with result.checkpoint.as_directory() as d:
            history = json.loads((Path(d) / "state.json").read_text())["history"]
    ray.shutdown()
    return [h["train/images_per_s"] for h in history]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (~1-2 minutes)")
    parser.add_argument("--stage", default="unfreeze", choices=["probe", "lora", "unfreeze"])
    args = parser.parse_args()
    n, epochs = (200, 3) if args.quick else (600, 4)
    work = Path(tempfile.mkdtemp(prefix="prism-bench-"))
    os.chdir(work)
    cfg = load_config(ROOT / "jobs" / "circles.yaml", [f"data.synthetic.n={n}", "data.val_fraction=0.1",
                                                        "data.check_images=false"])
    stage = next(s for s in cfg.stages if s.kind == args.stage)
    cfg = cfg.model_copy(update={"stages": [stage]})

    import ray

    from prism.data import resolve_labels_csv, split_table
    from prism.data.table import read_label_table
    from prism.tasks import build_task

    task = build_task(cfg)
    table = read_label_table(resolve_labels_csv(cfg), "image", task.label_columns(), task.unknown_labels)
    rows = pd.concat([table.rows[["path"]], pd.DataFrame(task.encode_labels(table.rows))], axis=1)
    train_df, _ = split_table(rows, task.stratify_key(table.rows), cfg.data.val_fraction, cfg.data.split_seed)

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_rates = ray_train(cfg, epochs)
    plain_rates = plain_loop(cfg, train_df, epochs)
    prism_ips = statistics.mean(ray_rates[1:])
    plain_ips = statistics.mean(plain_rates[1:])
    result = {
        "name": "train_throughput", "what": f"training images/s, stage '{args.stage}', "
        f"{cfg.backbone.name} @ {cfg.backbone.img_size}px, batch {cfg.data.batch_size}, {len(train_df)} images",
        "prism": round(prism_ips, 1), "reference": round(plain_ips, 1), "ratio": round(prism_ips / plain_ips, 3),
        "prism_label": "Ray Train, 1 worker, Ray Data from PNG files",
        "reference_label": "plain PyTorch loop, DataLoader(num_workers=2) from the same files",
        "epochs_measured": epochs - 1, "prism_per_epoch": [round(r, 1) for r in ray_rates],
        "reference_per_epoch": [round(r, 1) for r in plain_rates],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_throughput.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
