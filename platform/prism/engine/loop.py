"""``train_loop_per_worker``: the one training function, generic over tasks.

The TorchTrainer driver (:mod:`prism.engine.driver`), Ray Tune and ``ray job submit`` all run this same
function. It knows no task by name: the task object builds the model, turns batches into tensors, computes
the loss and the metrics. Each epoch it trains on this worker's shard of ``train``, evaluates on its shard of
``val``, all-reduces the metrics, and reports them with a checkpoint (written by rank 0).

``config`` keys: ``job`` (the resolved :class:`~prism.config.JobConfig` as a dict) and optionally
``resume_from`` (a checkpoint directory) and ``val_fingerprint`` (of the validation split, written into each
checkpoint's ``metrics.json`` so a bundle knows which rows it was scored on).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from prism.config import JobConfig
from prism.engine.checkpoint import load_checkpoint, save_checkpoint
from prism.engine.inputs import model_inputs, to_device
from prism.engine.metrics import merged
from prism.engine.precision import autocast, resolve_amp
from prism.engine.predict import predict_batch
from prism.engine.state import TrainState, is_better
from prism.runtime.console import quiet_train_worker
from prism.runtime.distributed import all_reduce_sum

__all__ = ["shuffle_seed", "train_loop_per_worker"]

# Ray Train routes a worker's log records to the driver's console and its log files once each (a plain
# print() can show up twice when another library wraps stdout).
log = logging.getLogger("prism.engine")


def _cosine_factor(epochs: int):
    """LR multiplier per epoch of a stage: cosine from 1 down to 0.1."""
    return lambda e: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(e, epochs) / max(epochs, 1)))


def dist_backend() -> str:
    """The process group's backend (``gloo``, ``nccl``), or ``none`` outside one."""
    import torch.distributed as dist

    return dist.get_backend() if dist.is_available() and dist.is_initialized() else "none"


def shuffle_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the local shuffle of worker ``rank`` in ``epoch`` (1-based): new each epoch, fixed per run."""
    return (seed * 1_000_003 + epoch * 1009 + rank) % 2**32


def _batches(task, shard, batch_size: int, **kwargs):
    """``(inputs, targets)`` on CPU from the task's Ray collate class (moved to the device by the caller:
    ragged targets are lists of dicts, which Ray's own device transfer would not handle)."""
    return shard.iter_torch_batches(batch_size=batch_size, collate_fn=task.collate_fn(), device="cpu", **kwargs)


def _train_epoch(task, ddp: nn.Module, model: nn.Module, params: list[nn.Parameter], shard, optimizer, scaler,
                 cfg: JobConfig, device: torch.device, amp_dtype, seed: int) -> dict[str, float]:
    ddp.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # stays on the device: no sync per step
    rows = 0
    start = time.perf_counter()
    buffer = cfg.data.shuffle_buffer or None
    mean, std = model.backbone.mean, model.backbone.std
    for inputs, targets in _batches(task, shard, cfg.data.batch_size, local_shuffle_buffer_size=buffer,
                                    local_shuffle_seed=seed if buffer else None):
        inputs = model_inputs(inputs, device, mean, std)
        targets = to_device(targets, device)
        n = len(inputs["image"])
        with autocast(device, amp_dtype):
            outputs = ddp(inputs)
            loss, _ = task.loss(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.train.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach().double() * n
        rows += n
    loss_total = loss_sum.cpu()  # waits for the device's queued work, so `elapsed` includes it
    elapsed = time.perf_counter() - start
    totals = all_reduce_sum(torch.stack([loss_total, torch.tensor(rows, dtype=torch.float64)]))
    if totals[1] == 0:
        raise RuntimeError("the training shard produced no batches: is the train split empty?")
    # images of all workers over this worker's wall time: the job's training throughput
    return {"train/loss": float(totals[0] / totals[1]), "train/images_per_s": float(totals[1]) / max(elapsed, 1e-9)}


@torch.no_grad()
def _evaluate(task, model: nn.Module, shard, cfg: JobConfig):
    """Validation scores what users get: :func:`predict_batch` with Serve's default TTA views, merged
    over every worker."""
    model.eval()
    acc = task.metrics()
    device = next(model.parameters()).device
    for inputs, targets in _batches(task, shard, cfg.data.batch_size):
        inputs = model_inputs(inputs, device, model.backbone.mean, model.backbone.std)
        acc.update(predict_batch(task, model, inputs, tta=True, amp=cfg.train.amp), to_device(targets, device))
    return merged(acc, task.metrics)


def _restore(model: nn.Module, resume_from: str | None) -> tuple[TrainState, dict | None]:
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and resume_from:
        ckpt = ray.train.Checkpoint.from_directory(resume_from)
    if ckpt is None:
        return TrainState(), None
    with ckpt.as_directory() as d:
        return load_checkpoint(Path(d), model)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Run the stage plan of ``config["job"]`` on this worker (see the module docstring)."""
    from prism.adapters import apply_stage, bundle_names, trainable_report
    from prism.engine.model import build_model
    from prism.tasks import build_task

    quiet_train_worker(bool(config.get("verbose")))
    cfg = JobConfig.model_validate(config["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.train.seed)
    task = build_task(cfg)
    model = build_model(cfg, task)
    names = sorted(bundle_names(model, cfg.stages))
    state, opt_state = _restore(model, config.get("resume_from"))
    device = ray.train.torch.get_device()
    model.to(device)
    amp_dtype = resolve_amp(cfg.train.amp, device)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    epochs_per_stage = [s.epochs for s in cfg.stages]
    if rank == 0 and state.epoch:
        log.info(f"[prism] resuming after epoch {state.epoch}: stage {state.stage_index}, "
                 f"epoch {state.epoch_in_stage} of that stage")

    for si in range(state.stage_index, len(cfg.stages)):
        state.stage_index = si  # what each checkpoint's position (next_position) is computed from
        stage = cfg.stages[si]
        groups = apply_stage(model, stage)
        params = [p for g in groups for p in g["params"]]
        optimizer = torch.optim.AdamW(groups)
        if opt_state is not None and state.optimizer_stage == si:
            optimizer.load_state_dict(opt_state)
        opt_state = None
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine_factor(stage.epochs))
        for _ in range(state.epoch_in_stage):
            sched.step()
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        ddp: nn.Module = model
        if world > 1:
            # a CLIP tower's image projection is a backbone weight an unfreeze stage opens, unused unless the
            # task reads features["embedding"]: DDP must then not wait for its gradient
            unused = task.ddp_unused_parameters or (
                stage.kind == "unfreeze" and getattr(model.backbone, "embedding_dim", None) is not None)
            ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=unused)
        if rank == 0:
            where = f"{world} workers (DDP, {dist_backend()})" if world > 1 else f"1 worker ({device.type})"
            log.info(f"[prism] stage {si + 1}/{len(cfg.stages)} '{stage.name}' ({stage.kind}, {stage.epochs} "
                     f"epochs) on {where}\n{trainable_report(model)}")

        for e in range(state.epoch_in_stage, stage.epochs):
            t0 = time.perf_counter()
            lrs = {f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups}
            train_m = _train_epoch(task, ddp, model, params, train_shard, optimizer, scaler, cfg, device, amp_dtype,
                                   shuffle_seed(cfg.train.seed, state.epoch + 1, rank))
            sched.step()
            acc = _evaluate(task, model, val_shard, cfg)
            val_m = acc.compute("val/")
            extra_m, extra_files = task.epoch_report(model, state.epoch + 1)  # e.g. the dual-circle scores
            val_m.update(extra_m)
            if cfg.train.metric not in val_m and cfg.train.metric not in train_m:
                raise ValueError(f"train.metric '{cfg.train.metric}' is not reported; choose one of "
                                 f"{sorted([*val_m, *train_m])}")
            state.epoch += 1
            state.epoch_in_stage = e + 1
            metrics = {"epoch": state.epoch, "stage_index": si, **train_m, **val_m, **lrs,
                       "epoch_time_s": time.perf_counter() - t0}
            value = metrics[cfg.train.metric]
            if is_better(value, state.best, cfg.train.mode):
                state.best = value
            if is_better(value, state.stage_best, cfg.train.mode):
                state.stage_best, state.bad_epochs = value, 0
            else:
                state.bad_epochs += 1
            patience = cfg.train.early_stop_patience
            stop = patience is not None and state.bad_epochs >= patience and e + 1 < stage.epochs
            state.history.append({k: float(v) for k, v in metrics.items()})
            state.optimizer_stage = si
            nxt = state.next_position(epochs_per_stage, stopped_early=stop)
            if rank == 0:
                log.info(_epoch_line(cfg, stage.name, metrics, stop))
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = None
                if rank == 0:
                    save_checkpoint(Path(tmp), cfg=cfg, task=task, model=model, names=names,
                                    optimizer=optimizer, state=nxt, metrics=metrics,
                                    extra={"stats": acc.export(), "val_fingerprint": config.get("val_fingerprint")})
                    for rel, data in extra_files.items():
                        (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
                        (Path(tmp) / rel).write_bytes(data)
                    checkpoint = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch_{state.epoch:04d}")
            if stop:
                break
        state.epoch_in_stage = 0
        state.stage_best, state.bad_epochs = None, 0
        if world > 1:
            del ddp


def _epoch_line(cfg: JobConfig, stage: str, m: dict[str, float], stopped: bool) -> str:
    keys = list(dict.fromkeys(["train/loss", "val/loss", *type(cfg.task).summary_metrics, cfg.train.metric]))
    shown = "  ".join(f"{k} {m[k]:.4f}" for k in keys if k in m)
    tail = "  (early stop: next stage)" if stopped else ""
    return (f"[prism] epoch {int(m['epoch']):3d}/{cfg.total_epochs} [{stage}]  {shown}  "
            f"{m['train/images_per_s']:.0f} img/s  {m['epoch_time_s']:.1f}s{tail}")
