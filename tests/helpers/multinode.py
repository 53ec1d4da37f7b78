"""A simulated multi-node Ray cluster (``ray.cluster_utils.Cluster``) in a process of its own.

:func:`simulated_cluster` starts this module as a script: it brings up a head node (no CPUs: nothing that
needs one runs there, as on a cluster whose head only coordinates) with the dashboard on a free loopback
port, and worker nodes with CPUs of their own. Every node has the label ``prism-test/node`` (``head``,
``worker-1``, …) so a test can say where something ran. The script prints one JSON line (the addresses and
``{node id: node name}``), then holds the cluster until its stdin closes or it is sent SIGTERM.

Nothing here calls ``ray.init``: the test process stays free of Ray, so another cluster (the session Ray of
the integration tests) is never confused with this one. All nodes share one private temp dir, which names
every process of the cluster (``tests.helpers.ray_procs``): stopping them never touches another Ray on the
machine. Token authentication stays on (``RAY_AUTH_MODE=token``, the token of ``ray get-auth-token``).

Every node of the simulator runs on this machine and sees the same files: a path that exists on the head
exists on the workers too. What differs per node is the Ray state (raylet, object store, worker processes,
runtime-env agent), so placement is real, file visibility is not. Each node gets a runtime-env folder of its
own, as separate machines have: in a shared one, the other nodes' agents, installing a submitted job's
``working_dir`` as soon as its driver connects, unpack it again over the folder the driver on the head runs
in, and the driver loses its working directory (``os.getcwd()`` raises FileNotFoundError).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.ray_procs import free_port, private_ray_tmp, ray_processes, stop_ray_processes

__all__ = ["NODE_LABEL", "SimCluster", "simulated_cluster", "wait_for_job_agent"]

NODE_LABEL = "prism-test/node"
"""The node label whose value names each simulated node (``head``, ``worker-1``, ``worker-2``, …)."""

ROOT = Path(__file__).resolve().parents[2]
# run as a script from the test's folder, without PYTHONPATH: the cluster's processes inherit the
# environment, and Prism must reach them as the installed package, not from the source tree
_SCRIPT = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
           "from tests.helpers.multinode import main; main(sys.argv[1:])")


@dataclass(frozen=True)
class SimCluster:
    """A running simulated cluster: its addresses, its nodes and the temp dir that names its processes."""

    gcs_address: str
    dashboard: str
    nodes: dict[str, str]
    ray_tmp: Path

    def node_name(self, node_id: str) -> str:
        """``head`` / ``worker-<i>`` for a node id of this cluster (hex); unknown ids fail loudly."""
        if node_id not in self.nodes:
            raise KeyError(f"node {node_id} is not one of this cluster's nodes {self.nodes}")
        return self.nodes[node_id]


def _serve(ray_tmp: Path, dashboard_port: int, workers: int, worker_cpus: int) -> None:
    """Start the cluster, print its description, hold it until stdin closes; then shut it down."""
    from ray.cluster_utils import Cluster

    # Ray's temp dir is <ray_tmp>/ray = $RAY_TMPDIR/ray (set by simulated_cluster): the Cluster utility writes
    # the "current cluster" address file to $RAY_TMPDIR/ray, and a job's supervisor reads it from the node's
    # temp dir to tell the entrypoint its RAY_ADDRESS. Apart, the supervisor finds no file and falls back to
    # any GCS process on the machine: another cluster's.
    temp_dir = ray_tmp / "ray"
    temp_dir.mkdir(exist_ok=True)
    object_store = 200 * 1024 * 1024
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "temp_dir": str(temp_dir), "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": dashboard_port, "dashboard_agent_listen_port": free_port(),
        "gcs_server_port": free_port(), "labels": {NODE_LABEL: "head"}, "object_store_memory": object_store,
        "runtime_env_dir_name": "runtime_resources_head"})
    try:
        nodes = {cluster.head_node.node_id: "head"}
        for i in range(1, workers + 1):
            name = f"worker-{i}"
            node = cluster.add_node(num_cpus=worker_cpus, labels={NODE_LABEL: name},
                                    object_store_memory=object_store, runtime_env_dir_name=f"runtime_resources_{name}")
            nodes[node.node_id] = name
        cluster.wait_for_nodes()
        print(json.dumps({"gcs_address": cluster.gcs_address, "dashboard": f"http://127.0.0.1:{dashboard_port}",
                          "nodes": nodes}), flush=True)
        sys.stdin.read()  # returns when the test closes the pipe (or dies)
    finally:
        cluster.shutdown()


def wait_for_job_agent(address: str, gcs_address: str, cwd: Path, env: dict[str, str],
                       timeout_s: float = 180) -> None:
    """Return once the head accepts a job, and check that a job's driver is pointed at ``gcs_address``.

    The dashboard refuses submissions ("No available agent to submit job") until the head's job agent has
    registered, which a client cannot await otherwise. The probe job prints the ``RAY_ADDRESS`` its
    supervisor gave it: a supervisor that found no address file falls back to any GCS on the machine.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        out = subprocess.run([str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address,
                              "--", "printenv", "RAY_ADDRESS"], cwd=cwd, env={**os.environ, **env},
                             capture_output=True, text=True, timeout=120)
        text = out.stdout + out.stderr
        if out.returncode == 0:
            if gcs_address not in out.stdout:
                raise RuntimeError(f"a job on the cluster at {gcs_address} was given another RAY_ADDRESS:\n{text}")
            return
        assert "No available agent" in text and time.monotonic() < deadline, text[-2000:]
        time.sleep(1)


@contextlib.contextmanager
def simulated_cluster(cwd: Path, *, workers: int = 2, worker_cpus: int = 2, start_attempts: int = 2,
                      timeout_s: float = 300) -> Iterator[SimCluster]:
    """A head and ``workers`` worker nodes in a subprocess (see the module docstring), ready for
    ``ray job submit``; on exit the script is told to stop, then whatever is left of the cluster's processes
    (found by its private temp dir) is stopped, and the temp dir removed.

    A start is tried ``start_attempts`` times: Ray gives each node 30 s to register with the GCS, which a
    machine busy with other work can exceed. The cluster's processes inherit ``RAY_API_SERVER_ADDRESS`` =
    this dashboard: Ray Train asks the State API whether its controller lives, and a client without an
    address of its own may ask another Ray on the machine, hear "no such actor" and tear down a healthy run.
    """
    # token authentication is on only where a token exists (a fresh machine has none): make one if needed
    token = subprocess.run([str(Path(sys.executable).parent / "ray"), "get-auth-token", "--generate"], cwd=cwd,
                           capture_output=True, text=True, timeout=120)
    assert token.returncode == 0, token.stdout + token.stderr
    failures: list[str] = []
    for _ in range(start_attempts):
        ray_tmp, port = private_ray_tmp(), free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
        # RAY_TMPDIR: the "current cluster" address file goes to the private dir, not the machine's /tmp/ray
        # (where it would redirect any `ray.init("auto")` on the machine to this cluster)
        env.update({"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(ray_tmp),
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                    "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"})
        cmd = [sys.executable, "-c", _SCRIPT, "--temp-dir", str(ray_tmp), "--dashboard-port",
               str(port), "--workers", str(workers), "--worker-cpus", str(worker_cpus)]
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        errors: list[str] = []
        threading.Thread(target=lambda p=proc, e=errors: e.extend(p.stderr), daemon=True).start()  # never blocks it
        try:
            line = _first_line(proc, timeout_s)
            if line:
                info = json.loads(line)
                cluster = SimCluster(info["gcs_address"], info["dashboard"], info["nodes"], ray_tmp)
                wait_for_job_agent(cluster.dashboard, cluster.gcs_address, cwd, {"RAY_AUTH_MODE": "token"})
                yield cluster
                return
            failures.append("".join(errors)[-4000:])
        finally:
            _stop(proc, ray_tmp)
    raise RuntimeError(f"the simulated cluster did not start in {start_attempts} attempts; last error:\n"
                       f"{failures[-1]}")


def _stop(proc: subprocess.Popen, ray_tmp: Path) -> None:
    """Close the script's stdin (it shuts the cluster down), then stop what is left under ``ray_tmp``."""
    with contextlib.suppress(OSError):
        proc.stdin.close()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:  # still starting: Ray's SIGTERM handler stops the node's processes
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    stop_ray_processes(ray_tmp)
    left = ray_processes(ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not left, f"processes of the simulated cluster still run: {left}"


def _first_line(proc: subprocess.Popen, timeout_s: float) -> str:
    """The script's first stdout line, or '' if it exits or stays silent for ``timeout_s``."""
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return out[0] if out else ""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--temp-dir", type=Path, required=True)
    p.add_argument("--dashboard-port", type=int, required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--worker-cpus", type=int, default=2)
    a = p.parse_args(argv)
    _serve(a.temp_dir, a.dashboard_port, a.workers, a.worker_cpus)


if __name__ == "__main__":
    main()
