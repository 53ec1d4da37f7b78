"""Segmenter training cost: images/s of the text-prompted segmenter vs the classifier on the same backbone.

Two models on the same backbone at the same image size (518 px by default, DINOv2's own), each built as a
job builds it: the task's ``example_job()`` (its LoRA section and its last stage, ``lora``: the heads and
the backbone's LoRA train) with the backbone and image size overridden:

- **Prism**: the segmenter, ``task.name: segment`` with SAM ViT-B's prompt encoder and mask decoder (256
  channels) on SAM's 64 × 64 image embedding (masks at 256 × 256), and the tiny CLIP text tower (the frozen
  tower runs once per row, a small cost beside the backbone);
- **reference**: the single-label classifier of ``classify``'s example job (CLS token → a small MLP).

One training step is ``bench/detection_train.py``'s (the body of the train loop: forward, the task's loss,
backward, gradient clipping, AdamW, under the job's ``train.amp``) on the task's ``example_batch`` kept on the
device; images/s is the median over repeats, the models taking turns. The ratio segmenter / classifier is how
much the decoder slows training down.

    python bench/segment_train.py            # 518 px, batch 2 (16 on a GPU)
    python bench/segment_train.py --quick    # 224 px, a 32 x 32 embedding, fewer steps
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from _common import BenchResult, Row, bench_parser, write_result
from detection_train import training_step

MODELS = ("segmenter", "classifier")


def job(model: str, backbone: str, img_size: int, grid: int):
    from prism.config import load_config
    from prism.tasks import task_class

    raw = task_class("classify" if model == "classifier" else "segment").example_job()
    if model == "segmenter":
        raw["task"].update(sam_type="vit_b", decoder_grid=grid)
    return load_config(raw=raw, overrides=[f"backbone.name={backbone}", f"backbone.img_size={img_size}"])


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--backbone", default="dinov2_vits14", help="a registered backbone (random init)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    img, grid = (224, 32) if args.quick else (518, 64)
    batch = 16 if device.type == "cuda" else 2
    warmup, steps, repeats = (1, 1, 2) if args.quick else (1, 2, 3)
    load = [os.getloadavg()[0]]
    runs = {m: training_step(job(m, args.backbone, img, grid), batch, device) for m in MODELS}
    for step, _ in runs.values():
        for _ in range(warmup):
            step()
    rates: dict[str, list[float]] = {m: [] for m in MODELS}
    t0 = time.perf_counter()
    for _ in range(repeats):
        for m, (step, _) in runs.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            rates[m].append(steps * batch / (time.perf_counter() - start))
    wall = time.perf_counter() - t0
    load.append(os.getloadavg()[0])
    counts = {m: c for m, (_, c) in runs.items()}
    rate = {m: statistics.median(r) for m, r in rates.items()}
    seg = f"segmenter, SAM ViT-B decoder on {grid} x {grid} ({counts['segmenter']['heads'] / 1e6:.1f} M head parameters)"
    cls = f"classifier ({counts['classifier']['heads'] / 1e6:.2f} M head parameters)"
    rows = [Row(f"training images/s at {img} px, segmenter vs classifier", "img/s", rate["segmenter"],
                rate["classifier"], seg, cls)]
    amp = "bf16 autocast" if device.type == "cuda" else "float32"
    cfg = job("segmenter", args.backbone, img, grid)
    setup = (f"{device}, {args.backbone} (random init), stage 'lora' (LoRA rank {cfg.lora.rank} on the last "
             f"{cfg.lora.last_k} block(s) + heads train), {amp}, {torch.get_num_threads()} torch threads; {img} px, "
             f"batch {batch}, median of {repeats} repeats of {steps} steps after {warmup} warm-up")
    notes = ["Synthetic batches already on the device: no data loading, the figures are the models' cost alone.",
             "Trainable parameters: " + ", ".join(f"{m} {c['trainable'] / 1e6:.2f} M" for m, c in counts.items())
             + "."]
    write_result(BenchResult(name="segment_train", title="Segmenter training cost vs the classifier", rows=rows,
                             quick=args.quick, setup=setup, notes=notes,
                             details={"images_per_s": rates, "parameters": counts, "wall_s": wall,
                                      "load_avg_1min": load}))


if __name__ == "__main__":
    main()
