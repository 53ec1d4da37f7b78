"""What every benchmark shares: the result record, the machine description, JPEG fixtures, timing helpers.

A benchmark measures Prism and a plain reference side by side in one process run and writes one
:class:`BenchResult` to ``bench/results/<name>.json``; ``bench/report.py`` renders every result into
``docs/benchmarks.md``. A row's ``ratio`` is always ``prism / reference`` for a higher-is-better unit
(throughput, FLOP/s) and ``reference / prism`` for a lower-is-better one (latency, seconds), so > 1 means
Prism is ahead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

# The benchmarks start a local Ray whose workers use this interpreter. Under `uv run`, Ray would otherwise
# package the working folder (a benchmark's temporary folder) and start its workers with `uv run` there,
# where there is no project, and every worker start would fail.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CACHE = ROOT / "bench" / ".cache"

__all__ = ["CACHE", "RESULTS", "ROOT", "SAMPLE_EVERY_S", "BenchResult", "Row", "TreeRss", "bench_parser",
           "git_revision", "machine", "make_jpegs", "time_call", "write_result"]

LOWER_IS_BETTER = {"s", "ms", "seconds", "MiB"}
"""Units of costs (time, memory): their ratio is reference / Prism, so > 1 still means Prism is ahead."""


@dataclass
class Row:
    """One comparison: Prism's figure, the reference figure and their ratio (> 1 = Prism ahead).

    ``target`` is the goal for the ratio (or, with ``target_on="prism"``, a floor for Prism's own figure;
    with ``target_on="prism_max"``, a ceiling, e.g. milliseconds of overhead), e.g. ``0.95``; ``None``
    when the row is informative only.
    """

    what: str
    unit: str
    prism: float
    reference: float
    prism_label: str = "Prism"
    reference_label: str = "reference"
    target: float | None = None
    target_on: str = "ratio"
    ratio: float = field(init=False)
    met: bool | None = field(init=False)

    def __post_init__(self) -> None:
        if self.prism <= 0 or self.reference <= 0:
            self.ratio = float("nan")
        elif self.unit in LOWER_IS_BETTER:
            self.ratio = self.reference / self.prism
        else:
            self.ratio = self.prism / self.reference
        if self.target is None:
            self.met = None
        elif self.target_on == "prism_max":
            self.met = bool(self.prism <= self.target)
        else:
            self.met = bool((self.ratio if self.target_on == "ratio" else self.prism) >= self.target)


@dataclass
class BenchResult:
    """What one benchmark run measured; ``details`` holds the raw per-repeat figures."""

    name: str
    title: str
    rows: list[Row]
    quick: bool
    setup: str = ""
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=lambda: machine())
    date: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine() -> dict[str, Any]:
    """The device the figures come from: CPU model and count, GPU if any, library versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cpus": os.cpu_count(), "torch": torch.__version__,
                            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_result(result: BenchResult) -> Path:
    """Write ``bench/results/<name>.json`` and print the rows as a small table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{result.name}.json"
    path.write_text(json.dumps(result.to_dict(), indent=2, default=float) + "\n")
    print(f"\n{result.title}  ({'quick' if result.quick else 'full'} run; {result.setup})")
    for r in result.rows:
        goal = "" if r.met is None else ("  target met" if r.met else f"  below target {r.target}")
        print(f"  {r.what:<48} prism {r.prism:>10.4g} {r.unit:<7} reference {r.reference:>10.4g}  "
              f"ratio {r.ratio:6.3f}{goal}")
    print(f"→ {path.relative_to(ROOT)}")
    return path


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the ``--quick`` flag every benchmark has."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    parser.add_argument("--quick", action="store_true", help="a small run that finishes in about a minute")
    return parser


def time_call(fn: Callable[[], Any]) -> float:
    """Wall time of one ``fn()`` call in seconds."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def make_jpegs(n: int, size: tuple[int, int] = (500, 375), seed: int = 0, quality: int = 90) -> Path:
    """``n`` synthetic JPEG photos-to-be (shapes over gradients and noise), cached under ``bench/.cache``.

    Returns the folder; it holds ``img_00000.jpg`` … and ``labels.csv`` (``image,presence``) so that Prism
    jobs can read it as an image folder. The default size is ImageNet's typical 500 x 375.
    """
    from PIL import Image, ImageDraw

    out = CACHE / f"jpegs-n{n}-{size[0]}x{size[1]}-q{quality}-s{seed}"
    if (out / "labels.csv").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    classes = ["circle_clear", "circle_resembles", "no_circle"]
    lines = ["image,presence,closure,circularity"]
    for i in range(n):
        base = rng.uniform(40, 215, 3)
        grad = rng.uniform(-0.2, 0.2, (2, 3))
        img = base + xx[..., None] * grad[0] + yy[..., None] * grad[1] + rng.normal(0, 12, (h, w, 3))
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(pil)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = rng.uniform(0, w * 0.7), rng.uniform(0, h * 0.7)
            box = [x0, y0, x0 + rng.uniform(20, w * 0.3), y0 + rng.uniform(20, h * 0.3)]
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, outline=color, width=4)
        name = f"img_{i:05d}.jpg"
        pil.save(out / name, quality=quality)
        label = classes[i % 3]
        extra = "closed,circular" if label != "no_circle" else ","
        lines.append(f"{name},{label},{extra}")
    (out / "labels.csv").write_text("\n".join(lines) + "\n")
    return out


def git_revision() -> str:
    """Short commit of the tree being measured (``unknown`` outside git)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":  # pragma: no cover - a quick look at the fixture
    print(make_jpegs(int(sys.argv[1]) if len(sys.argv) > 1 else 16))


SAMPLE_EVERY_S = 0.1
RELIST_EVERY_S = 0.5


class TreeRss:
    """Peak RSS of a set of processes, sampled every :data:`SAMPLE_EVERY_S` in a background thread.

    The set is this process and its descendants, minus the subtrees of ``exclude`` (pids of direct
    children: Ray's own processes while the reference runs) when given; it is re-listed every
    :data:`RELIST_EVERY_S` (listing walks all of ``/proc``; reading one process's RSS is cheap). RSS counts
    pages shared between processes (fork copy-on-write, Ray's shared-memory object store) once per process
    that touches them.
    """

    def __init__(self, exclude: set[int] | None = None):
        import psutil

        self.me = psutil.Process()
        self.exclude = exclude or set()
        self.peak = self.peak_driver = self.peak_anon = 0
        self.samples = 0
        self._procs: list = []
        self._listed = 0.0
        self._relist_now = threading.Event()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _relist(self) -> None:
        import psutil

        children: dict[int, list[int]] = {}
        for p in psutil.process_iter(["ppid"]):
            children.setdefault(p.info["ppid"], []).append(p.pid)
        pids, todo = [self.me.pid], [c for c in children.get(self.me.pid, []) if c not in self.exclude]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            todo += children.get(pid, [])
        known = {p.pid: p for p in [self.me, *self._procs]}
        self._procs = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):  # exited since the listing
                self._procs.append(known.get(pid) or psutil.Process(pid))
        self._listed = time.monotonic()

    def sample(self) -> int:
        import psutil

        if self._relist_now.is_set() or time.monotonic() - self._listed > RELIST_EVERY_S:
            self._relist_now.clear()
            self._relist()
        total = anon = 0
        for p in self._procs:
            try:
                mem = p.memory_info()
            except psutil.Error:  # exited in between
                continue
            total += mem.rss
            anon += mem.rss - getattr(mem, "shared", 0)  # Linux: shared = file-backed + shared memory
            if p.pid == self.me.pid:
                self.peak_driver = max(self.peak_driver, mem.rss)
        self.peak = max(self.peak, total)
        self.peak_anon = max(self.peak_anon, anon)
        self.samples += 1
        return total

    def relist_soon(self) -> None:
        """List the processes again and sample them now, in the sampling thread (call once new ones have
        started, e.g. at the first batch, when the DataLoader workers run)."""
        self._relist_now.set()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(SAMPLE_EVERY_S)
            self._wake.clear()
            if self._stop:
                return
            self.sample()

    def __enter__(self) -> TreeRss:
        self.start_rss = self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join()
        self._relist()
        self.sample()


# -- the sides -------------------------------------------------------------------------------------
