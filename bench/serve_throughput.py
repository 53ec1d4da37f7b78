"""Serving images/s and latency: HTTP through Ray Serve (two ingresses, batched and unbatched, one or
several images per request) vs. direct Predictor calls.

One model version (the circles job's tiny random ``dinov2_tiny`` at 112 px, built without training) is
registered in a temporary SQLite MLflow store and served by Prism's real app, deployed from
``serve_configs/circles.yaml`` pinned to one replica (``run_local(path)``, Serve's config path; HTTP on
127.0.0.1), through each ingress of :mod:`prism.serve.ingress`: ``proxy`` (Serve's Python proxy, the
default) and ``haproxy`` (HAProxy in front of a replica that answers HTTP itself; skipped with a note when
the haproxy binary is missing). Clients send one 128 x 128 JPEG per multipart ``POST /predict`` request at
concurrency 1, 8 and 32 (asyncio + aiohttp in this process), and, batched, 8 JPEGs per request at
concurrency 4 (32 images in flight); each level runs a fixed number of requests after an untimed warm-up.
Each ingress serves twice: batching on (``max_batch_size`` 32) and off (1; the same replica reconfigured).

The reference, "direct", is the ideal batched server without HTTP: at concurrency c, c image files in
flight are handed to ``Predictor.predict`` (decode, resize, forward, postprocess) as one batch in this
process, with as many torch threads as the replica gets (its ``num_cpus``); its throughput is images/s
over back-to-back calls and each image's latency is its call's time. TTA is off on both sides. Writes
``bench/results/serve_throughput.json``.

    python bench/serve_throughput.py            # 400 requests per level
    python bench/serve_throughput.py --quick    # 100 requests per level (a few minutes with Serve starts)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import ROOT, BenchResult, Row, bench_parser, make_jpegs, write_result

CONCURRENCY = (1, 8, 32)
MULTI = (4, 8)  # multi-image requests: 4 concurrent requests of 8 images = 32 images in flight
BATCH = 32
INGRESSES = ("proxy", "haproxy")
OVERHEAD_TARGET_MS = 5.0
PORT = 8123
MODEL = "circles-bench"
LEVEL_BUDGET_S = 120.0  # no concurrency level runs longer than this, whatever the request count
REQUEST_TIMEOUT_S = 30.0
CONFIG = ROOT / "serve_configs" / "circles.yaml"


def register_model(root: Path, overrides: list[str]) -> tuple[str, str]:
    """Build the circles job's model (random backbone, seeded), save a bundle, register it; → (tracking, model URI)."""
    import mlflow
    import torch

    from prism.adapters import bundle_names
    from prism.config import load_config
    from prism.engine.model import build_model
    from prism.inference.bundle import write_bundle
    from prism.inference.publish import register_bundle
    from prism.tasks import build_task
    from prism.tracking import configure_tracking, get_or_create_experiment

    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    cfg = load_config(ROOT / "jobs" / "circles.yaml", overrides)
    task = build_task(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, task)
    bundle = write_bundle(root / "bundle", cfg, task, model, sorted(bundle_names(model, cfg.stages)))
    uri = configure_tracking(f"sqlite:///{root}/mlflow.db")
    experiment = get_or_create_experiment("serve-bench")
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_metric("val/macro_f1", 0.5)
    mv = register_bundle(bundle, MODEL, run_id=run.info.run_id, metric="val/macro_f1", value=0.5, mode="max",
                         pip_requirements=["mlflow"])
    return uri, f"models:/{MODEL}/{mv.version}"


def summary(latencies_s: list[float], n_images: int, wall_s: float) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1000.0
    return {"images_per_s": n_images / wall_s, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "n": int(n_images), "wall_s": wall_s}


def run_direct(predictor, images: list[bytes], concurrency: int, n_requests: int) -> dict[str, float]:
    """c images per ``predictor.predict`` call, back to back; every image's latency is its call's time."""
    calls = max(1, n_requests // concurrency)
    batch = [images[k % len(images)] for k in range(concurrency)]
    for _ in range(2):  # warm-up
        predictor.predict(batch, tta=False, batch_size=concurrency)
    latencies: list[float] = []
    t0 = time.perf_counter()
    for i in range(calls):
        batch = [images[(i * concurrency + k) % len(images)] for k in range(concurrency)]
        t = time.perf_counter()
        predictor.predict(batch, tta=False, batch_size=concurrency)
        latencies += [time.perf_counter() - t] * concurrency
        if time.perf_counter() - t0 > LEVEL_BUDGET_S:
            break
    wall = time.perf_counter() - t0
    return summary(latencies, len(latencies), wall)


async def _http_level(url: str, images: list[bytes], concurrency: int, n_requests: int,
                      warmup: int, per_request: int = 1) -> dict[str, float]:
    import aiohttp

    latencies: list[float] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(k: int) -> float:
            form = aiohttp.FormData()
            for j in range(per_request):
                form.add_field("images", images[(k * per_request + j) % len(images)], filename=f"img_{k}_{j}.jpg",
                               content_type="image/jpeg")
            t = time.perf_counter()
            async with session.post(f"{url}/predict", data=form) as resp:
                body = await resp.read()
                if resp.status != 200:
                    errors.append(f"{resp.status}: {body[:200]!r}")
            return time.perf_counter() - t

        async def worker(queue: list[int], record: bool, deadline: float) -> None:
            while queue and time.perf_counter() < deadline:
                dt = await one(queue.pop())
                if record:
                    latencies.append(dt)

        start = time.perf_counter()
        await asyncio.gather(*(worker(list(range(warmup))[w::concurrency], False, start + LEVEL_BUDGET_S)
                               for w in range(concurrency)))
        todo = list(range(n_requests))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(todo, True, t0 + LEVEL_BUDGET_S) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, first: {errors[0]}")
    return summary(latencies, len(latencies) * per_request, wall)


def run_http(url: str, images: list[bytes], concurrency: int, n_requests: int, per_request: int = 1) -> dict[str, float]:
    """``n_requests`` requests of ``per_request`` images each, ``concurrency`` in flight; latency per request."""
    return asyncio.run(_http_level(url, images, concurrency, n_requests, warmup=max(8, 2 * concurrency),
                                   per_request=per_request))


def serve_config(model_uri: str, max_batch_size: int, wait_s: float) -> dict:
    """``serve_configs/circles.yaml`` with one replica (no autoscaling) and these settings (tta off)."""
    import yaml

    from prism.serve import ServeSettings

    raw = yaml.safe_load(CONFIG.read_text())
    (app,) = raw["applications"]
    (dep,) = app["deployments"]
    dep.pop("autoscaling_config", None)
    dep["num_replicas"] = 1
    dep["user_config"] = ServeSettings(model_uri=model_uri, max_batch_size=max_batch_size,
                                       batch_wait_timeout_s=wait_s, tta=False).model_dump(mode="json")
    return raw


def deploy(folder: Path, tracking_uri: str, raw: dict, ingress: str = "proxy") -> str:
    """Deploy ``raw`` as ``serve deploy`` does (a running replica is only reconfigured); → base URL."""
    import requests
    import yaml

    from prism.serve import run_local

    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(raw))
    url = run_local(path, tracking_uri=tracking_uri, host="127.0.0.1", port=PORT, blocking=False, ingress=ingress)
    wanted = raw["applications"][0]["deployments"][0]["user_config"]
    deadline = time.monotonic() + 120
    while requests.get(f"{url}/settings", timeout=10).json() != wanted:
        if time.monotonic() > deadline:
            raise TimeoutError("the new settings never reached the replica")
        time.sleep(0.2)
    return url


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--wait", type=float, default=None,
                        help="batch_wait_timeout_s for the batched deployment (default: ServeSettings' default)")
    parser.add_argument("--backbone", default=None,
                        help="serve another registered backbone (random weights), e.g. dinov2_vits14; the result "
                        "is then written as serve_throughput_<backbone>_<img-size>.json")
    parser.add_argument("--img-size", type=int, default=None, help="with --backbone: its input size")
    parser.add_argument("--requests", type=int, default=None, help="requests per level (default 400, quick 100)")
    args = parser.parse_args()
    n_requests = args.requests or (100 if args.quick else 400)
    overrides = [] if args.backbone is None else [f"backbone.name={args.backbone}", "backbone.pretrained=false"]
    if args.img_size is not None:
        overrides.append(f"backbone.img_size={args.img_size}")
    work = Path(tempfile.mkdtemp(prefix="prism-bench-serve-"))
    os.chdir(work)
    folder = make_jpegs(64, size=(128, 128))
    images = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]

    import ray
    import torch
    from ray import serve

    from prism.inference.predictor import load_predictor
    from prism.serve import ServeSettings

    tracking_uri, model_uri = register_model(work, overrides)
    wait_s = ServeSettings().batch_wait_timeout_s if args.wait is None else args.wait

    replica_cpus = int(serve_config(model_uri, BATCH, wait_s)["applications"][0]["deployments"][0]
                       ["ray_actor_options"]["num_cpus"])
    driver_threads = torch.get_num_threads()
    torch.set_num_threads(replica_cpus)  # what the replica gets: Ray sets OMP_NUM_THREADS from its num_cpus
    predictor = load_predictor(model_uri, device="cpu")
    direct = {c: run_direct(predictor, images, c, n_requests) for c in CONCURRENCY}
    torch.set_num_threads(driver_threads)
    print("direct", {c: round(d["images_per_s"], 1) for c, d in direct.items()}, "images/s", flush=True)

    from prism.serve.ingress import haproxy_available

    ingresses = list(INGRESSES)
    skipped: list[str] = []
    if not haproxy_available():
        ingresses.remove("haproxy")
        skipped.append("haproxy ingress not measured: no haproxy binary (apt-get install haproxy)")
        print(skipped[-1], flush=True)

    multi_c, multi_n = MULTI
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    runs: dict[str, dict[str, dict[str, float]]] = {}  # "<ingress> <mode>" → level → summary
    deploy_s: dict[str, float] = {}
    try:
        for ingress in ingresses:
            for mode, size in (("batched", BATCH), ("unbatched", 1)):
                key = f"{ingress} {mode}"
                t = time.perf_counter()
                url = deploy(work, tracking_uri, serve_config(model_uri, size, wait_s), ingress)
                deploy_s[key] = time.perf_counter() - t
                runs[key] = {str(c): run_http(url, images, c, n_requests) for c in CONCURRENCY}
                if mode == "batched":
                    runs[key][f"{multi_c}x{multi_n}"] = run_http(url, images, multi_c, max(1, n_requests // multi_n),
                                                                 per_request=multi_n)
                print(f"{key} (deployed in {deploy_s[key]:.1f} s)",
                      {c: round(d["images_per_s"], 1) for c, d in runs[key].items()}, "images/s", flush=True)
            serve.shutdown()  # the next ingress needs a Serve started with its own controller environment
    finally:
        serve.shutdown()
        ray.shutdown()

    rows: list[Row] = []
    top = max(CONCURRENCY)
    # batched Serve at concurrency 32 vs direct: the tiny model's forward is ~0.5 ms, so HTTP's cost shows;
    # a model whose compute dominates (ViT-S/14, --backbone) must come close to direct
    throughput_target = 0.5 if args.backbone is None else 0.9
    for ingress in ingresses:
        via = "Serve's proxy" if ingress == "proxy" else "HAProxy + direct ingress"
        batched, unbatched = runs[f"{ingress} batched"], runs[f"{ingress} unbatched"]
        label = f"Ray Serve HTTP via {via}, max_batch_size={BATCH}"
        rows.append(Row(f"{ingress}: per-request overhead at concurrency 1, p50 (Serve - direct)", "ms",
                        batched["1"]["p50_ms"] - direct[1]["p50_ms"], OVERHEAD_TARGET_MS, label,
                        "target ceiling", target=OVERHEAD_TARGET_MS, target_on="prism_max"))
        for c in CONCURRENCY:
            s_, d = batched[str(c)], direct[c]
            target = throughput_target if c == top else None
            rows.append(Row(f"{ingress}: batched throughput, concurrency {c}, 1 image per request", "images/s",
                            s_["images_per_s"], d["images_per_s"], label,
                            f"direct Predictor.predict, {c} images per call", target=target))
            for q in ("p50", "p99"):
                rows.append(Row(f"{ingress}: batched {q} latency, concurrency {c}", "ms", s_[f"{q}_ms"],
                                d[f"{q}_ms"], label, f"direct, {c} images per call"))
        m = batched[f"{multi_c}x{multi_n}"]
        rows.append(Row(f"{ingress}: batched throughput, {multi_c} concurrent requests of {multi_n} images", "images/s",
                        m["images_per_s"], direct[top]["images_per_s"], label,
                        f"direct Predictor.predict, {top} images per call", target=throughput_target))
        rows.append(Row(f"{ingress}: batched p50 latency per request, {multi_c} x {multi_n} images", "ms",
                        m["p50_ms"], direct[top]["p50_ms"], label, f"direct, {top} images per call"))
        for c in CONCURRENCY:
            rows.append(Row(f"{ingress}: unbatched throughput, concurrency {c}", "images/s",
                            unbatched[str(c)]["images_per_s"], direct[c]["images_per_s"],
                            f"Ray Serve HTTP via {via}, max_batch_size=1", f"direct, {c} images per call"))
        rows.append(Row(f"{ingress}: batched vs unbatched throughput, concurrency {top}", "images/s",
                        batched[str(top)]["images_per_s"], unbatched[str(top)]["images_per_s"],
                        f"max_batch_size={BATCH}", "max_batch_size=1", target=2.0))
    rows.append(Row(f"what batching can gain: direct, {top} images per call vs 1", "images/s",
                    direct[top]["images_per_s"], direct[1]["images_per_s"], f"direct, {top} images per call",
                    "direct, 1 image per call"))
    if "haproxy" in ingresses:
        for c in (1, top):
            rows.append(Row(f"haproxy vs proxy ingress: batched throughput, concurrency {c}", "images/s",
                            runs["haproxy batched"][str(c)]["images_per_s"], runs["proxy batched"][str(c)]["images_per_s"],
                            "HAProxy + direct ingress", "Serve's proxy"))
    name = "serve_throughput"
    if overrides:
        name = f"serve_throughput_{args.backbone or 'dinov2_tiny'}_{predictor.img_size}"
    cfg_line = (f"{predictor.cfg.backbone.name} (random) @ {predictor.img_size} px, 3 heads, tta off; 128x128 JPEG; "
                f"{n_requests} requests per level ({max(1, n_requests // multi_n)} of {multi_n} images); "
                f"batch_wait_timeout_s={wait_s}")
    result = BenchResult(
        name=name,
        title="Serving: Ray Serve HTTP (two ingresses, batched / unbatched) vs. direct Predictor calls"
        + (f", {predictor.cfg.backbone.name} @ {predictor.img_size} px" if overrides else ""),
        rows=rows, quick=args.quick, setup=cfg_line,
        notes=[
            "direct = the ideal batched server without HTTP: at concurrency c, c JPEG files go to "
            "Predictor.predict as one batch (decode, resize, forward, postprocess) in the benchmark process, "
            f"with torch on {replica_cpus} thread(s) like the replica (ray_actor_options.num_cpus="
            f"{replica_cpus}; Ray sets OMP_NUM_THREADS from it); throughput = images/s over back-to-back calls, "
            "latency of each image = its call's time.",
            "Serve = serve_configs/circles.yaml pinned to one replica (run_local, Serve's config path), HTTP "
            "on 127.0.0.1, multipart POST /predict from concurrent aiohttp clients in the benchmark process; "
            "latency = request round trip. Client, ingress and replica share the machine's CPUs.",
            "proxy = Serve's Python proxy actor (HTTP parsing, routing, a Ray actor call to the replica); "
            "haproxy = prism serve --ingress haproxy: HAProxy forwards the HTTP request to the replica, which "
            "parses it itself (Serve's direct ingress).",
            "overhead = Serve's p50 at concurrency 1 minus direct's p50 at 1 image per call.",
            "unbatched = the same replica reconfigured to max_batch_size=1.",
            *skipped,
        ],
        details={"direct": direct, **runs, "n_requests": n_requests, "batch_wait_timeout_s": wait_s,
                 "replica_cpus": replica_cpus, "driver_torch_threads": driver_threads, "deploy_s": deploy_s,
                 "mean_direct_throughput": statistics.mean(d["images_per_s"] for d in direct.values())},
    )
    write_result(result)


if __name__ == "__main__":
    main()
