"""Replica loss under load: a steady request rate for 60 s against 2 replicas, one killed (SIGKILL) after 20 s.

The served app is ``serve_configs/circles.yaml`` pinned to 2 replicas, serving the circles job's tiny model
(random ``dinov2_tiny``, registered in a temporary SQLite store), HTTP on 127.0.0.1. A client thread pool
sends one 128 x 128 JPEG per ``POST /predict`` at a fixed rate (open loop, :func:`prism.serve.loadtest.
steady_load`); after ``--kill-at`` seconds one replica process gets SIGKILL. Two runs, each on a freshly
started Serve, side by side:

- *before*: Serve as it comes (no proxy middleware) and a plain client (no retries): what a user saw;
- *after*: Prism's configs (``prism.serve.proxy_retry`` in Serve's proxies) and :class:`prism.serve.client.
  Client` (retries 503 and connection failures).

Reported per run: requests, success rate, p50 / p99 / max latency of successful requests, the errors, and
how long Serve took to have 2 live replicas again. Writes ``bench/results/serve_faults.json``.

    python bench/serve_faults.py             # 20 requests/s for 60 s, kill at 20 s, both runs (~3 min)
    python bench/serve_faults.py --quick     # 20 requests/s for 25 s, kill at 8 s
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from _common import ROOT, BenchResult, Row, bench_parser, make_jpegs, write_result

APP = "circles"
CONFIG = ROOT / "serve_configs" / "circles.yaml"
PORT = 8126


def replica_pids(app: str = APP) -> set[int]:
    """PIDs of the live replica processes of ``app`` on this machine (Ray names them ``ray::ServeReplica:<app>:…``)."""
    pids = set()
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if cmd.startswith(f"ray::ServeReplica:{app}:") and proc.info["status"] != psutil.STATUS_ZOMBIE:
            pids.add(proc.info["pid"])
    return pids


def wait_replicas(n: int, exclude: set[int], timeout_s: float, app: str = APP) -> float:
    """Seconds until ``n`` replica processes of ``app`` live, none of them in ``exclude``, and Serve reports the
    deployment HEALTHY with ``n`` RUNNING replicas; TimeoutError after ``timeout_s``."""
    from ray import serve

    t0 = time.monotonic()
    while True:
        alive = replica_pids(app)
        if len(alive) >= n and not (alive & exclude):
            status = serve.status().applications.get(app)
            deployment = None if status is None else status.deployments.get("ModelServer")
            if (deployment is not None and deployment.status == "HEALTHY"
                    and deployment.replica_states.get("RUNNING") == n):
                return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"{len(alive - exclude)} of {n} replicas of {app!r} live and healthy "
                               f"{timeout_s:.0f} s after the kill")
        time.sleep(0.2)


def fault_config(model_uri: str, *, retry_layer: bool, replicas: int = 2, num_cpus: float = 1.0) -> dict[str, Any]:
    """``serve_configs/circles.yaml`` with ``replicas`` fixed replicas (no autoscaling), tta off, and Prism's
    proxy middleware on or off (off: the proxy callback set to empty, which Serve reads as none)."""
    from prism.serve import ServeSettings
    from prism.serve.proxy_retry import CALLBACK_ENV

    raw = yaml.safe_load(CONFIG.read_text())
    if not retry_layer:
        raw["controller_options"]["runtime_env"]["env_vars"][CALLBACK_ENV] = ""
    (app,) = raw["applications"]
    (dep,) = app["deployments"]
    dep.pop("autoscaling_config", None)
    dep["num_replicas"] = replicas
    dep["ray_actor_options"]["num_cpus"] = num_cpus
    dep["user_config"] = ServeSettings(model_uri=model_uri, max_batch_size=16, tta=False).model_dump(mode="json")
    return raw


def run_scenario(url: str, image: bytes, *, rate: float, duration_s: float, kill_at_s: float,
                 client_retries: bool, app: str = APP, replicas: int = 2) -> dict[str, Any]:
    """The load with one replica killed at ``kill_at_s``; → the load report's summary, the killed PID and the
    seconds until ``replicas`` replicas lived again and Serve called the deployment healthy (the replacement)."""
    from prism.serve.client import Client
    from prism.serve.loadtest import steady_load

    local = threading.local()

    def send(i: int) -> None:
        if not hasattr(local, "client"):
            local.client = Client(url, timeout_s=30, retries=5 if client_retries else 0)
        local.client.predict([(f"img_{i}.jpg", image)], tta=False)

    before = replica_pids(app)
    if len(before) != replicas:
        raise RuntimeError(f"expected {replicas} replicas of {app!r} before the run, found {len(before)}")
    killed: dict[str, Any] = {}

    def kill() -> None:
        pid = min(replica_pids(app))
        os.kill(pid, signal.SIGKILL)
        killed.update(pid=pid, at=time.monotonic())

    timer = threading.Timer(kill_at_s, kill)
    timer.start()
    try:
        report = steady_load(send, rate, duration_s)
    finally:
        timer.cancel()
    if "pid" not in killed:
        raise RuntimeError("the replica was not killed during the run")
    replaced_s = wait_replicas(replicas, {killed["pid"]}, timeout_s=180, app=app) + time.monotonic() - killed["at"]
    return {**report.summary(), "killed_pid": killed["pid"], "replaced_after_s": replaced_s,
            "outcomes": [(round(o.start_s, 3), round(1e3 * o.latency_s, 2), o.ok, o.error)
                         for o in report.outcomes]}


def deploy(work: Path, tracking_uri: str, raw: dict[str, Any], ingress: str = "proxy") -> str:
    from prism.serve import run_local

    path = work / "serve.yaml"
    path.write_text(yaml.safe_dump(raw))
    return run_local(path, tracking_uri=tracking_uri, host="127.0.0.1", port=PORT, blocking=False, ingress=ingress)





def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second (default 20)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of load (default 60, quick 25)")
    parser.add_argument("--kill-at", type=float, default=None, help="kill time in s (default 20, quick 8)")
    args = parser.parse_args()
    duration = args.duration or (25.0 if args.quick else 60.0)
    kill_at = args.kill_at or (8.0 if args.quick else 20.0)

    import ray
    from ray import serve

    from serve_throughput import register_model

    work = Path(tempfile.mkdtemp(prefix="prism-bench-faults-"))
    os.chdir(work)
    image = sorted(make_jpegs(4, size=(128, 128)).glob("*.jpg"))[0].read_bytes()
    tracking_uri, model_uri = register_model(work, [])
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    runs: dict[str, dict[str, Any]] = {}
    plan = [("before", False, "proxy"), ("after", True, "proxy")]
    from prism.serve.ingress import haproxy_available

    if haproxy_available():
        plan.append(("haproxy", True, "haproxy"))
    try:
        for name, on, ingress in plan:
            url = deploy(work, tracking_uri, fault_config(model_uri, retry_layer=on), ingress)
            wait_replicas(2, set(), timeout_s=120)
            runs[name] = run_scenario(url, image, rate=args.rate, duration_s=duration, kill_at_s=kill_at,
                                      client_retries=on)
            print(name, {k: v for k, v in runs[name].items() if k != "outcomes"}, flush=True)
            serve.shutdown()  # the next run starts Serve (and its proxies) anew
    finally:
        serve.shutdown()
        ray.shutdown()

    before, after = runs["before"], runs["after"]
    labels = {"prism_label": "proxy_retry middleware + prism.serve.client.Client",
              "reference_label": "Serve without the middleware, plain client (no retries)"}
    rows = [
        Row("requests answered (success rate), one of 2 replicas killed", "%", 100 * after["success_rate"],
            100 * before["success_rate"], target=99.9, target_on="prism", **labels),
        Row("p50 latency of answered requests", "ms", after["p50_ms"], before["p50_ms"], **labels),
        Row("p99 latency of answered requests", "ms", after["p99_ms"], before["p99_ms"], **labels),
        Row("max latency of answered requests", "ms", after["max_ms"], before["max_ms"], **labels),
        Row("killed replica replaced after", "s", after["replaced_after_s"], before["replaced_after_s"], **labels),
    ]
    if "haproxy" in runs:
        ha = runs["haproxy"]
        ha_labels = {"prism_label": "ingress haproxy (HAProxy retry-on) + prism.serve.client.Client",
                     "reference_label": labels["reference_label"]}
        rows += [
            Row("haproxy ingress: requests answered (success rate), one of 2 replicas killed", "%",
                100 * ha["success_rate"], 100 * before["success_rate"], target=99.9, target_on="prism", **ha_labels),
            Row("haproxy ingress: p50 latency of answered requests", "ms", ha["p50_ms"], before["p50_ms"], **ha_labels),
            Row("haproxy ingress: p99 latency of answered requests", "ms", ha["p99_ms"], before["p99_ms"], **ha_labels),
            Row("haproxy ingress: killed replica replaced after", "s", ha["replaced_after_s"],
                before["replaced_after_s"], **ha_labels),
        ]
    result = BenchResult(
        name="serve_faults", title="Replica loss under load: 2 replicas, one killed", rows=rows, quick=args.quick,
        setup=f"{args.rate:g} requests/s for {duration:g} s (one 128x128 JPEG each), SIGKILL to one of 2 replicas "
              f"at {kill_at:g} s; dinov2_tiny (random) @ 112 px, tta off",
        notes=[
            "Both runs: serve_configs/circles.yaml pinned to 2 replicas (1 CPU each), deployed with run_local on "
            "a fresh Serve, HTTP on 127.0.0.1; open-loop requests from a thread pool in the benchmark process "
            "(prism.serve.loadtest.steady_load), 30 s timeout per attempt.",
            "before: RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH empty (Serve's proxy as it comes) and a client "
            "without retries; after: the configs' proxy middleware (prism.serve.proxy_retry) and "
            "prism.serve.client.Client (retries on 502/503/504 and connection errors, Retry-After honoured).",
            "haproxy (when the haproxy binary is installed): the after run with prism serve --ingress haproxy: "
            "HAProxy in front of replicas that answer HTTP themselves, resending requests whose replica "
            "closed the connection without an answer (prism.serve.ingress.HAPROXY_RETRY_ON).",
            "details.<run>.errors counts the failed requests by error, details.<run>.failed lists each of them "
            "(start s, latency ms, ok, error). Replacement: seconds from the kill until 2 replica processes live "
            "again and Serve reports the deployment HEALTHY with 2 RUNNING replicas (Serve's controller restarts "
            "the lost one).",
        ],
        details={name: {**{k: v for k, v in run.items() if k != "outcomes"},
                        "failed": [o for o in run["outcomes"] if not o[2]]} for name, run in runs.items()},
    )
    write_result(result)


if __name__ == "__main__":
    main()
