"""Detector training cost: images/s and peak memory of the detection task's decoders vs the classifier.

Three models on the same backbone at the same image size, each built as a job builds it: the task's
``example_job()`` (its LoRA section and its last stage, ``lora``: the heads and the backbone's LoRA train)
with the backbone and image size overridden, ``prism.engine.model.build_model``, then
``prism.adapters.apply_stage`` and AdamW over its groups:

- **Prism**: the detector, ``task.name: detection`` with ``task.decoder.preset`` ``lightweight`` and then
  ``standard`` (feature pyramid + deformable DETR decoder, Hungarian-matched loss on every layer);
- **reference**: the single-label classifier of ``classify``'s example job (CLS token → a small MLP).

One training step is what ``train_loop_per_worker`` runs per batch: forward, the task's loss, backward,
gradient clipping (``train.grad_clip``), AdamW step, under the job's ``train.amp`` (float32 on a CPU, bf16
autocast on a GPU). The batch is the task's ``example_batch`` (random pixels; for the detector 0 to 2 random
boxes per image) through its collate class, made once and kept on the device: data loading and decoding are
excluded, so the figures are the models' own cost. Images/s is the median over repeats of a few timed steps,
after untimed warm-up steps; the three models take turns, one repeat each. The rows are informative: the ratio
detector / classifier is how much the decoder slows training down.

Peak memory, at 518 px and batch 2, is measured in a fresh process per model (nothing of the others left in
it), as the growth above a baseline taken after one step of the task's tiny example job (so the imports, the
lazily built kernels and the allocator's start-up are not counted): on a GPU of
``torch.cuda.max_memory_allocated``, on a CPU of the process's peak RSS (``VmHWM``, reset at the baseline and
kept by the kernel, so no peak is missed between samples). Both count the weights, the activations, the
gradients and AdamW's state.

    python bench/detection_train.py            # 224 px, batch 8 (32 on a GPU); memory over 3 steps
    python bench/detection_train.py --quick    # 112 px, batch 4, fewer steps; memory over 1 step
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from _common import BenchResult, Row, bench_parser, write_result

MODELS = ("lightweight", "standard", "classifier")
"""The detector's decoder presets, then the reference."""
MEMORY_IMG, MEMORY_BATCH = 518, 2


def job(model: str, backbone: str, img_size: int, last_k: int | None):
    """The job config of ``model`` (a decoder preset or ``classifier``) on ``backbone`` at ``img_size`` px."""
    from prism.config import load_config
    from prism.tasks import task_class

    if model == "classifier":
        raw = task_class("classify").example_job()
    else:
        raw = task_class("detection").example_job()
        raw["task"]["decoder"] = {"preset": model}  # the preset's own sizes, not the example's small ones
    overrides = [f"backbone.name={backbone}", f"backbone.img_size={img_size}"]
    if last_k is not None:
        overrides.append(f"lora.last_k={last_k}")
    return load_config(raw=raw, overrides=overrides)


def training_step(cfg, batch: int, device: torch.device) -> tuple[Callable[[], None], dict[str, int]]:
    """A closure running one training step of ``cfg``'s last stage on a fixed batch, and the parameter counts.

    The step is the body of ``prism.engine.loop._train_epoch``: inputs ``{"image": float (B, 3, S, S)}``
    normalised on ``device``, targets as the task's collate class gives them.
    """
    from prism.adapters import apply_stage
    from prism.engine.inputs import model_inputs, to_device
    from prism.engine.model import build_model
    from prism.engine.precision import autocast, resolve_amp
    from prism.tasks import build_task

    torch.manual_seed(cfg.train.seed)
    task = build_task(cfg)
    model = build_model(cfg, task).to(device)
    groups = apply_stage(model, cfg.stages[-1])
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups)
    amp_dtype = resolve_amp(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    inputs, targets = task.collate_fn()(task.example_batch(batch, seed=0))
    inputs = model_inputs(inputs, device, model.backbone.mean, model.backbone.std)
    targets = to_device(targets, device)
    model.train()

    def step() -> None:
        with autocast(device, amp_dtype):
            loss, _ = task.loss(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.train.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()

    counts = {"heads": sum(p.numel() for p in model.heads.parameters()),
              "trainable": sum(p.numel() for p in params)}
    return step, counts


def throughput(backbone: str, img: int, batch: int, last_k: int | None, warmup: int, steps: int, repeats: int,
               device: torch.device) -> tuple[dict[str, list[float]], dict[str, dict[str, int]]]:
    """Images/s of every model per repeat (``steps`` timed steps each), the models taking turns."""
    runs = {m: training_step(job(m, backbone, img, last_k), batch, device) for m in MODELS}
    for step, _ in runs.values():
        for _ in range(warmup):
            step()
    rates: dict[str, list[float]] = {m: [] for m in MODELS}
    for _ in range(repeats):
        for m, (step, _) in runs.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            rates[m].append(steps * batch / (time.perf_counter() - t0))
    return rates, {m: counts for m, (_, counts) in runs.items()}


def _status_bytes(key: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``: resident now, ``VmHWM``: its peak), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}: the CPU memory figure needs Linux")


def _reset_peak_rss() -> int:
    """Reset this process's peak RSS to its current RSS (Linux ``clear_refs`` 5); → the current RSS, bytes.

    ``getrusage``'s ``ru_maxrss`` cannot serve: it keeps the parent's RSS at the fork, which a spawned
    worker inherits across ``exec``.
    """
    Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmRSS")


def peak_memory(model: str, backbone: str, last_k: int | None, steps: int) -> dict[str, float]:
    """MiB above the baseline at the peak of building ``model`` at 518 px and training it ``steps`` steps
    (``peak``), and once it is built (``built``); run it in a fresh process.

    The baseline is taken after one step of the task's tiny example job, so that the imports, the lazily
    built kernels and the allocator's start-up are in it and not in the figures.
    """
    from prism.config import load_config
    from prism.tasks import task_class

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    example = load_config(raw=task_class("classify" if model == "classifier" else "detection").example_job())
    warm, _ = training_step(example, MEMORY_BATCH, device)
    warm()
    del warm
    gc.collect()
    cfg = job(model, backbone, MEMORY_IMG, last_k)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _reset_peak_rss()
    step, _ = training_step(cfg, MEMORY_BATCH, device)
    built = torch.cuda.memory_allocated() if device.type == "cuda" else _status_bytes("VmRSS")
    for _ in range(steps):
        step()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _status_bytes("VmHWM")
    return {"peak": (peak - base) / 2**20, "built": (built - base) / 2**20}


def isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a new Python process (spawned: no memory of this one shared or inherited)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--backbone", default="dinov2_vits14", help="a registered backbone (random init)")
    parser.add_argument("--img-size", type=int, default=None, help="throughput image size (default 224; quick 112)")
    parser.add_argument("--batch", type=int, default=None, help="throughput batch (default 8, 32 on a GPU; quick 4)")
    parser.add_argument("--last-k", type=int, default=None,
                        help="LoRA on the backbone's last K blocks (default: the example jobs' lora.last_k)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    img = args.img_size or (112 if args.quick else 224)
    batch = args.batch or (4 if args.quick else 32 if device.type == "cuda" else 8)
    warmup, steps, repeats = (1, 2, 3) if args.quick else (2, 4, 5)
    mem_steps = 1 if args.quick else 3

    load = [os.getloadavg()[0]]  # other work on the machine shows here first
    t0 = time.perf_counter()
    rates, counts = throughput(args.backbone, img, batch, args.last_k, warmup, steps, repeats, device)
    t1 = time.perf_counter()
    memory = {m: isolated(peak_memory, m, args.backbone, args.last_k, mem_steps) for m in MODELS}
    t2 = time.perf_counter()
    load.append(os.getloadavg()[0])

    rate = {m: statistics.median(r) for m, r in rates.items()}
    peak = {m: mem["peak"] for m, mem in memory.items()}
    cfg = job("classifier", args.backbone, img, args.last_k)
    head = cfg.task.head
    classifier = (f"classifier ({len(cfg.task.classes)} classes, '{head.pooling}' pooling → MLP "
                  f"{[*head.hidden, len(cfg.task.classes)]})")
    rows = []
    for preset in MODELS[:2]:
        detector = f"detector, decoder '{preset}' ({counts[preset]['heads'] / 1e6:.1f} M head parameters)"
        rows.append(Row(f"training images/s, detector ({preset}) vs classifier", "img/s", rate[preset],
                        rate["classifier"], detector, classifier))
    for preset in MODELS[:2]:
        detector = f"detector, decoder '{preset}' ({counts[preset]['heads'] / 1e6:.1f} M head parameters)"
        rows.append(Row(f"peak training memory, {MEMORY_IMG} px, detector ({preset}) vs classifier", "MiB",
                        peak[preset], peak["classifier"], detector, classifier))
    amp = "bf16 autocast" if device.type == "cuda" else "float32"
    lora = f"LoRA rank {cfg.lora.rank} on the last {cfg.lora.last_k or 'all'} block(s)"
    setup = (f"{device}, {args.backbone} (random init), stage 'lora' ({lora} + heads train), {amp}, "
             f"{torch.get_num_threads()} torch threads; images/s at {img} px, batch {batch}, median of {repeats} "
             f"repeats of {steps} steps after {warmup} warm-up; memory at {MEMORY_IMG} px, batch {MEMORY_BATCH}, "
             f"{mem_steps} step(s)")
    how = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "the peak RSS (VmHWM)"
    notes = ["Synthetic batches already on the device: no data loading, the figures are the models' cost alone.",
             f"Memory: {how} above the baseline after one step of the task's tiny example job (imports and "
             "kernel start-up excluded), one fresh process per model; weights, activations, gradients and AdamW "
             "state included.",
             "Trainable parameters: " + ", ".join(f"{m} {c['trainable'] / 1e6:.2f} M" for m, c in counts.items())
             + "."]
    write_result(BenchResult(
        name="detection_train", title="Detector training cost vs the classifier", rows=rows, quick=args.quick,
        setup=setup, notes=notes,
        details={"images_per_s": rates, "peak_mib": memory, "parameters": counts,
                 "wall_s": {"throughput": t1 - t0, "memory": t2 - t1}, "load_avg_1min": load}))
    print(f"  wall: throughput {t1 - t0:.0f} s, memory {t2 - t1:.0f} s")


if __name__ == "__main__":
    main()
