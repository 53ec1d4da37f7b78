"""Model efficiency: achieved FLOP/s of Prism's forward pass and LoRA training step against the matmul peak.

For each backbone (DINOv2 ViT-S/14 and ViT-B/14 at 224 px, random weights) the task model is built the way a
job builds it (``jobs/circles.yaml`` with the backbone overridden, LoRA rank 8 on the attention of every
block) and measured three ways:

* **forward**: the model as the Predictor holds it (written to a bundle, loaded back with
  ``Predictor.from_bundle``) run through ``predict_batch`` without TTA, batch ``--batch``;
* **plain timm**: ``timm.create_model("vit_*_patch14_dinov2")`` (same architecture, no wrapper, no LoRA)
  on the same batch, timed in alternation with the forward, to show what the wrapper costs;
* **LoRA train step**: forward + backward + AdamW step with ``apply_stage(model, <lora stage>)``, as
  ``prism.engine.loop`` runs it, batch ``--train-batch``.

FLOPs are counted once per configuration with ``torch.utils.flop_counter.FlopCounterMode`` (it counts
matmuls, convolutions and attention as 2 x multiply-accumulates; element-wise ops are not counted) and
checked against the analytic ViT count. The reference is the best FLOP/s of a square ``torch.mm`` (1024,
2048, 4096; fp32 on CPU, bf16 on CUDA) measured in the same run, before the models and after each one. On CUDA the reference timm
model and the train step run under bf16 autocast; the Prism forward runs exactly as the Predictor runs it
(``predict_batch`` with the job's ``train.amp``).

    python bench/model_flops.py            # ViT-S and ViT-B, 3 timed repeats each
    python bench/model_flops.py --quick    # ViT-S only on CPU (both models on CUDA), about a minute
    python bench/model_flops.py --device cuda
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import ROOT, BenchResult, Row, bench_parser, time_call, write_result
from prism.config import load_config
from prism.engine.model import build_model
from prism.engine.predict import predict_batch

# registered Prism backbone -> the same architecture in plain timm
MODELS = {"dinov2_vits14": "vit_small_patch14_dinov2", "dinov2_vitb14": "vit_base_patch14_dinov2"}
SHORT = {"dinov2_vits14": "ViT-S/14", "dinov2_vitb14": "ViT-B/14"}
IMG = 224
FORWARD_TARGET = 0.5  # forward FLOP/s as a fraction of the matmul peak
WRAPPER_TARGET = 0.95  # Prism forward img/s over plain timm img/s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> Callable[[], None]:
    def run() -> None:
        fn()
        _sync(device)

    return run


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` as ``FlopCounterMode`` counts them (matmul/conv/attention, 2 x MACs)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def analytic_vit_flops(depth: int, dim: int, patch: int, img: int, prefix: int = 1, mlp_ratio: int = 4,
                       lora_rank: int = 0, lora_blocks: int = 0) -> int:
    """2 x MACs of a ViT forward on one image: patch embedding, qkv/proj/MLP linears, QK^T and AV.

    LoRA on qkv and proj adds ``T * r * (C + 3C) + T * r * (C + C)`` MACs per adapted block.
    """
    n = (img // patch) ** 2
    t = n + prefix
    linears = t * dim * dim * (3 + 1 + 2 * mlp_ratio)
    attention = 2 * t * t * dim
    embed = n * 3 * patch * patch * dim
    lora = t * lora_rank * 6 * dim * lora_blocks
    return 2 * (depth * (linears + attention) + embed + lora)


def matmul_peak(device: torch.device, sizes: list[int], repeats: int) -> dict[int, float]:
    """FLOP/s of the fastest of ``repeats`` square ``torch.mm`` calls per size (fp32 on CPU, bf16 on CUDA).

    The fastest call, not the median: the peak is what the device can do, so a busy moment must not lower it
    (this can only make the ratios smaller)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        run = _timed(lambda a=a, b=b: torch.mm(a, b), device)
        run()
        seconds = min(time_call(run) for _ in range(repeats))
        out[n] = 2 * n**3 / seconds
    return out


def interleaved_medians(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function, timed in rounds (A, B, A, B, ...) after one warm-up call each,
    so that a machine that slows down mid-run affects every function alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(time_call(fn))
    return times


def job_config(backbone: str, lora_last_k: int | None) -> Any:
    """``jobs/circles.yaml`` with ``backbone`` at 224 px, random weights, LoRA on every block (or the last K)."""
    cfg = load_config(ROOT / "jobs" / "circles.yaml", [
        f"backbone.name={backbone}", f"backbone.img_size={IMG}", "backbone.pretrained=false",
        f"lora.last_k={'null' if lora_last_k is None else lora_last_k}"])
    lora_stage = next(s for s in cfg.stages if s.kind == "lora")
    return cfg.model_copy(update={"stages": [lora_stage]})


def predictor_model(cfg: Any, device: torch.device) -> tuple[Any, torch.nn.Module]:
    """(task, model) as ``Predictor.from_bundle`` returns them, via a bundle written to a temporary folder."""
    from prism.adapters import bundle_names
    from prism.inference.bundle import write_bundle
    from prism.inference.predictor import Predictor
    from prism.tasks import build_task

    task = build_task(cfg)
    model = build_model(cfg, task)
    with tempfile.TemporaryDirectory() as tmp:
        write_bundle(Path(tmp), cfg, task, model, bundle_names(model, cfg.stages))
        predictor = Predictor.from_bundle(tmp, device=device)
    return predictor.task, predictor.model


def measure_forward(backbone: str, cfg: Any, device: torch.device, batch: int, repeats: int
                    ) -> dict[str, Any]:
    """FLOPs per image and seconds per batch of the Predictor's forward, the plain timm forward and, when the
    Predictor's model still holds LoRA layers, the same model with LoRA merged."""
    import timm

    from prism.adapters import has_lora, merge_lora

    task, model = predictor_model(cfg, device)
    amp = task.cfg.train.amp  # what the Predictor passes to predict_batch (the bundle's train.amp)
    unmerged = has_lora(model)
    ref = timm.create_model(MODELS[backbone], pretrained=False, img_size=IMG, num_classes=0).to(device).eval()
    x = torch.randn(batch, 3, IMG, IMG, device=device)

    def prism() -> Any:
        return predict_batch(task, model, {"image": x}, tta=False, amp=amp)

    def plain() -> Any:
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            return ref(x)

    fns = {"prism": prism, "timm": plain}
    if device.type == "cpu":  # the opt-in CPU bf16 path (train.amp=bf16), same model and batch
        fns["prism_bf16"] = lambda: predict_batch(task, model, {"image": x}, tta=False, amp="bf16")
    if unmerged:
        merged_model = merge_lora(copy.deepcopy(model))
        fns["merged"] = lambda: predict_batch(task, merged_model, {"image": x}, tta=False, amp=amp)
    flops = {k: count_flops(fn) for k, fn in fns.items()}
    times = interleaved_medians({k: _timed(fn, device) for k, fn in fns.items()}, repeats)
    return {"batch": batch, "lora_unmerged_in_predictor": unmerged,
            "depth": model.backbone.num_blocks, "embed_dim": model.backbone.embed_dim,
            "gflops_per_image": {k: v / batch / 1e9 for k, v in flops.items()},
            "flops_per_batch": flops, "seconds": times,
            "median_s": {k: statistics.median(v) for k, v in times.items()},
            "best_s": {k: min(v) for k, v in times.items()}}


def measure_train_step(cfg: Any, device: torch.device, batch: int, repeats: int) -> dict[str, Any]:
    """FLOPs per image and seconds of one LoRA training step (forward, loss, backward, AdamW step)."""
    from prism.adapters import apply_stage
    from prism.engine.precision import autocast, resolve_amp
    from prism.tasks import build_task

    task = build_task(cfg)
    model = build_model(cfg, task).to(device).train()
    optimizer = torch.optim.AdamW(apply_stage(model, cfg.stages[0]))
    amp = resolve_amp(cfg.train.amp, device)
    inputs = {"image": torch.randn(batch, 3, IMG, IMG, device=device)}
    targets = {f"y_{h.name}": torch.randint(0, len(h.classes), (batch,), device=device) for h in cfg.task.heads}

    def step() -> None:
        with autocast(device, amp):  # forward and loss under autocast, as prism.engine.loop runs them
            outputs = model(inputs)
            loss, _ = task.loss(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # AdamW state exists from here on, so the counted step is a steady-state one
    flops = count_flops(step)
    run = _timed(step, device)
    run()
    times = [time_call(run) for _ in range(repeats)]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"batch": batch, "gflops_per_image": flops / batch / 1e9, "flops_per_batch": flops,
            "seconds": times, "median_s": statistics.median(times), "best_s": min(times), "trainable_params": trainable, "amp": str(amp)}


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast and a bf16 matmul peak)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=None,
                        help="default: both; --quick on CPU: dinov2_vits14 only")
    parser.add_argument("--batch", type=int, default=16, help="images per forward batch")
    parser.add_argument("--train-batch", type=int, default=8, help="images per training step")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3, CUDA 10)")
    parser.add_argument("--lora-last-k", type=int, default=None, help="adapt the last K blocks (default all)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    on_gpu = device.type == "cuda"
    models = args.models or (list(MODELS) if on_gpu or not args.quick else ["dinov2_vits14"])
    repeats = args.repeats or (10 if on_gpu else 3)
    sizes = [1024, 2048, 4096]
    peak_repeats = 10 if on_gpu else 3
    torch.manual_seed(0)

    t0 = time.perf_counter()
    peaks = [matmul_peak(device, sizes, peak_repeats)]
    per_model: dict[str, Any] = {}
    for name in models:
        cfg = job_config(name, args.lora_last_k)
        fwd = measure_forward(name, cfg, device, args.batch, repeats)
        train = measure_train_step(cfg, device, args.train_batch, repeats)
        peaks.append(matmul_peak(device, sizes, peak_repeats))
        lo = cfg.lora
        spec = (fwd["depth"], fwd["embed_dim"])
        blocks = spec[0] if lo.last_k is None else lo.last_k
        per_model[name] = {
            "forward": fwd, "train_step": train,
            "analytic_gflops_per_image": {
                "vit": analytic_vit_flops(*spec, patch=14, img=IMG) / 1e9,
                "vit_with_lora": analytic_vit_flops(*spec, patch=14, img=IMG, lora_rank=lo.rank,
                                                    lora_blocks=blocks) / 1e9},
            "lora": lo.model_dump(mode="json")}
    peak_by_size = {n: max(p[n] for p in peaks) for n in sizes}
    peak = max(peak_by_size.values())
    dtype = "bf16" if on_gpu else "fp32"
    peak_label = f"best {dtype} torch.mm ({'/'.join(map(str, sizes))})"

    rows: list[Row] = []
    notes: list[str] = []
    for name, m in per_model.items():
        fwd, train, short = m["forward"], m["train_step"], SHORT[name]
        fwd_rate = fwd["flops_per_batch"]["prism"] / fwd["best_s"]["prism"]
        rows.append(Row(f"forward FLOP/s, {short}, batch {fwd['batch']}", "GFLOP/s", fwd_rate / 1e9, peak / 1e9,
                        prism_label="Predictor model via predict_batch", reference_label=peak_label,
                        target=FORWARD_TARGET))
        rows.append(Row(f"LoRA train step FLOP/s, {short}, batch {train['batch']}", "GFLOP/s",
                        train["flops_per_batch"] / train["best_s"] / 1e9, peak / 1e9,
                        prism_label="fwd+bwd+AdamW, apply_stage(lora)", reference_label=peak_label))
        ips = {k: fwd["batch"] / s for k, s in fwd["best_s"].items()}
        rows.append(Row(f"forward img/s, {short}: Prism vs plain timm", "img/s", ips["prism"], ips["timm"],
                        prism_label="Predictor model via predict_batch",
                        reference_label=f"timm {MODELS[name]}" + (" (bf16 autocast)" if on_gpu else ""),
                        target=WRAPPER_TARGET))
        if "prism_bf16" in ips:
            rows.append(Row(f"forward img/s, {short}: train.amp=bf16 vs fp32 on CPU", "img/s", ips["prism_bf16"],
                            ips["prism"], prism_label="Predictor model via predict_batch, amp bf16",
                            reference_label="Predictor model via predict_batch, fp32 (amp auto)"))
        g = fwd["gflops_per_image"]
        a = m["analytic_gflops_per_image"]
        notes.append(f"{short}: FlopCounterMode {g['timm']:.3f} GFLOP/img for plain timm vs analytic "
                     f"{a['vit']:.3f}; Prism forward {g['prism']:.3f} (analytic with LoRA {a['vit_with_lora']:.3f}"
                     f" + heads); LoRA train step {train['gflops_per_image']:.3f} GFLOP/img "
                     f"({train['gflops_per_image'] / g['prism']:.2f} x forward: base weights are frozen, so "
                     "backward computes input gradients but no base weight gradients).")
        if fwd["lora_unmerged_in_predictor"]:
            notes.append(f"{short}: the Predictor's model keeps LoRA unmerged ({ips['prism']:.2f} img/s); "
                         f"the same model after merge_lora runs {ips['merged']:.2f} img/s "
                         f"({ips['merged'] / ips['prism']:.2f} x).")
    notes.append("Every figure is the fastest of its repeats (models: interleaved repeats after one warm-up call; "
                 "matmul peak: the fastest call of any size, measured before the models and after each one): on a "
                 "shared machine the fastest run is the one least disturbed, for both sides alike. Medians are in "
                 "the JSON details.")
    first = per_model[models[0]]
    lora = first["lora"]
    where = "every block" if lora["last_k"] is None else f"the last {lora['last_k']} blocks"
    setup = (f"{device.type}, {torch.get_num_threads()} threads, {dtype}; {IMG}px, random weights, LoRA r="
             f"{lora['rank']} on {'/'.join(lora['targets'])} of {where}; "
             f"forward batch {args.batch}, train batch {args.train_batch}; {repeats} repeats")
    result = BenchResult(
        name="model_flops", title="Model efficiency: achieved FLOP/s vs matmul peak", rows=rows,
        quick=args.quick, setup=setup, notes=notes,
        details={"device": str(device), "matmul_peak_gflops": {str(n): v / 1e9 for n, v in peak_by_size.items()},
                 "matmul_peak_runs_gflops": [{str(n): v / 1e9 for n, v in p.items()} for p in peaks],
                 "models": per_model, "wall_s": time.perf_counter() - t0})
    write_result(result)
    for note in notes:
        print(f"  {note}")


if __name__ == "__main__":
    main()
