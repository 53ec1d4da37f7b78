"""Search spaces for ``prism tune``: a YAML file over any job-config key, checked before any trial starts.

A space file (``tune_spaces/*.yaml``) has three sections::

    search:                                   # dotted job-config key → one distribution, applied in order
      lora.rank: {choice: [4, 8, 16]}         # one of these values
      lora.alpha: {grid: [8, 32]}             # every value (grid search; multiplies the trial count)
      lora.dropout: {uniform: [0.0, 0.2]}     # float in [low, high]
      stages.1.lr.lora: {loguniform: [1.0e-4, 1.0e-2]}   # float, log-uniform in [low, high], low > 0
      lora.last_k: {randint: [1, 5]}          # int in [low, high): 1..4, high excluded as in tune.randint
      stages: {choice: [[...plan A...], [...plan B...]]} # whole values: lists, mappings, stage plans
    sweep: {num_samples: 4, max_concurrent_trials: 1, asha: {grace_period: 1, reduction_factor: 2}}
    overrides:                                # fixed changes for every trial, like CLI key=value overrides
      data.synthetic.n: 300

Keys are the same dotted paths as ``prism train`` overrides (``stages.1.lr.lora``), applied with
:func:`prism.config.apply_overrides` in the order written, so ``stages`` can pick a plan and a later
``stages.1.lr.lora`` can tune that plan's LR. :func:`validate_space` applies every value a key can take
(each category, both ends of a range) to the job and validates the result with
:func:`prism.config.load_config`, so a typo or an impossible value fails before Ray starts, naming the key.
Nothing here imports Ray; :meth:`Dimension.to_tune` builds the Ray Tune domain when the sweep starts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from prism.config import JobConfig, apply_overrides, load_config
from prism.config.schema import ConfigError, StrictModel, format_validation_error

__all__ = [
    "DISTRIBUTIONS",
    "AshaSettings",
    "Dimension",
    "SearchSpace",
    "SweepSettings",
    "apply_values",
    "data_keys",
    "load_space",
    "parse_space",
    "validate_space",
]

# name → what it means, shown in errors about a bad distribution
DISTRIBUTIONS = {
    "choice": "one value of a list, sampled: {choice: [4, 8, 16]}",
    "grid": "every value of a list (grid search): {grid: [4, 8]}",
    "uniform": "float in [low, high]: {uniform: [0.0, 0.3]}",
    "loguniform": "float in [low, high], log-uniform, low > 0: {loguniform: [1.0e-4, 1.0e-2]}",
    "randint": "int in [low, high), high excluded: {randint: [1, 5]}",
}
SECTIONS = ("search", "sweep", "overrides")
# Combinations of probe values checked together; larger spaces are checked one key at a time.
MAX_COMBINATIONS = 256
# Keys read by the train loop, not by the dataset builder: searching them keeps the shared datasets.
LOADER_KEYS = ("data.batch_size", "data.shuffle_buffer", "data.progress_bars")
DATA_PREFIXES = ("task", "data", "backbone.img_size", "backbone.name")


class AshaSettings(StrictModel):
    """Asynchronous successive halving (``ray.tune.schedulers.ASHAScheduler``) over reported epochs."""

    max_t: int | None = Field(default=None, ge=1, description=(
        "Epoch budget the rungs are spaced over; default the longest stage plan. Trials with longer plans "
        "are stopped at max_t."))
    grace_period: int = Field(default=1, ge=1, description="Epochs every trial runs before it can be stopped.")
    reduction_factor: float = Field(default=2.0, gt=1, description="At each rung keep the best 1/reduction_factor.")


class SweepSettings(StrictModel):
    """How the search runs; the metric and mode default to the job's ``train.metric`` / ``train.mode``."""

    num_samples: int = Field(default=1, ge=1, description="Samples of the space (each grid point this often).")
    metric: str | None = Field(default=None, description="Metric to rank trials; sets train.metric of every trial.")
    mode: Literal["max", "min"] | None = Field(default=None, description="Sets train.mode of every trial.")
    max_concurrent_trials: int = Field(default=1, ge=1, description=(
        "Train runs at once; size it to the cluster (each needs train.num_workers × cpus_per_worker CPUs "
        "plus CPUs for Ray Data decoding)."))
    asha: AshaSettings | None = Field(default_factory=AshaSettings, description="null = no early stopping.")
    trial_resources: dict[str, float] = Field(default_factory=lambda: {"memory": 1}, description=(
        "Resources of the Tune function that drives one Train run; the Train workers request their own. "
        "Default: no CPU (1 byte of memory, as Tune refuses an empty request) — even 0.01 CPU would leave "
        "0.99 of the CPU a Ray Data decode task needs. On a cluster, a custom resource such as "
        "{TRAIN_DRIVER: 0.01} keeps the drivers on safe nodes, as Ray recommends."))
    seed: int | None = Field(default=None, description="Seed of the sampler, for a reproducible search.")
    alias: str = Field(default="candidate", min_length=1, description=(
        "Alias set on the best trial's registered version (never the job's tracking.alias)."))


@dataclass
class Dimension:
    """One searched config key: ``kind`` is a :data:`DISTRIBUTIONS` name, ``values`` its list or (low, high)."""

    key: str
    kind: str
    values: list[Any]

    def probes(self) -> list[Any]:
        """The values :func:`validate_space` tries: every category, or both ends of a range."""
        if self.kind in ("choice", "grid"):
            return list(self.values)
        low, high = self.values
        return [low, high - 1] if self.kind == "randint" else [low, high]

    def to_tune(self) -> Any:
        """The Ray Tune domain (``tune.choice``, ``tune.grid_search``, …)."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(self.values)
        if self.kind == "grid":
            return tune.grid_search(self.values)
        return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[self.kind](
            *self.values)


@dataclass
class SearchSpace:
    """A parsed space file: the dimensions in order, the sweep settings and the fixed overrides."""

    dimensions: list[Dimension]
    sweep: SweepSettings = field(default_factory=SweepSettings)
    overrides: dict[str, Any] = field(default_factory=dict)
    source: str = "space"

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]


def _parse_dimension(key: Any, spec: Any, source: str) -> Dimension:
    where = f"{source}: search.{key}"
    if not isinstance(key, str) or not key.strip() or any(not p for p in key.split(".")):
        raise ConfigError(f"{where}: keys are dotted job-config paths such as 'lora.rank' or 'stages.1.lr.lora'")
    valid = "; ".join(f"{name}: {desc}" for name, desc in DISTRIBUTIONS.items())
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: give one distribution as a mapping, e.g. {{choice: [4, 8]}}; "
                          f"got {spec!r}. Valid distributions: {valid}")
    kind, args = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution '{kind}'. Valid distributions: {valid}")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {kind} takes a non-empty list — {DISTRIBUTIONS[kind]}; got {args!r}")
    if kind in ("choice", "grid"):
        return Dimension(key, kind, args)
    numbers = len(args) == 2 and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    if not numbers or not args[0] < args[1] or not all(math.isfinite(a) for a in args):
        raise ConfigError(f"{where}: {kind} takes [low, high] with low < high — {DISTRIBUTIONS[kind]}; got {args!r}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}: randint bounds must be integers — {DISTRIBUTIONS[kind]}; got {args!r}")
    if kind == "loguniform" and args[0] <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0 — {DISTRIBUTIONS[kind]}; got {args!r}")
    return Dimension(key, kind, [float(a) for a in args] if kind != "randint" else list(args))


def parse_space(raw: Any, source: str = "space") -> SearchSpace:
    """Parse the mapping of a space file (see the module docstring); :class:`ConfigError` names what is wrong."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a space file is a mapping with sections {', '.join(SECTIONS)}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; valid sections: {', '.join(SECTIONS)}")
    search = raw.get("search") or {}
    if not isinstance(search, dict) or not search:
        raise ConfigError(f"{source}: 'search' must map at least one config key to a distribution, "
                          "e.g. search: {lora.rank: {choice: [4, 8]}}")
    dims = [_parse_dimension(k, v, source) for k, v in search.items()]
    try:
        sweep = SweepSettings.model_validate(raw.get("sweep") or {})
    except ValidationError as e:
        raise ConfigError(format_validation_error(SweepSettings, e, source=f"{source} (sweep)")) from None
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: 'overrides' maps dotted config keys to values, e.g. {{data.synthetic.n: 300}}")
    return SearchSpace(dims, sweep, overrides, source)


def load_space(path: str | Path) -> SearchSpace:
    """Read and parse a space YAML file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"search space not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}") from None
    return parse_space(raw, source=str(p))


def _plain(value: Any) -> Any:
    """Python values for YAML: NumPy scalars that Tune samples become int/float."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def apply_values(raw: dict[str, Any], values: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Copy of the job mapping ``raw`` with each ``(dotted key, value)`` set, exactly as a CLI override would."""
    items = [f"{k}={yaml.safe_dump(_plain(v), default_flow_style=True, width=1 << 30)}" for k, v in values]
    return apply_overrides(raw, items)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check(raw: dict[str, Any], values: list[tuple[str, Any]], what: str) -> JobConfig:
    try:
        return load_config(raw=apply_values(raw, values))
    except ConfigError as e:
        raise ConfigError(f"{what} does not make a valid job config:\n{e}") from None


def validate_space(space: SearchSpace, base: dict[str, Any]) -> int:
    """Apply each key's probe values to the job mapping ``base`` (overrides already in) and validate.

    Every key is checked alone (an unknown or impossible key is named), then the combinations of all
    probe values together when there are at most :data:`MAX_COMBINATIONS` (keys that interact, e.g. a
    ``stages`` choice and a later ``stages.1.lr.lora``). Raises :class:`ConfigError`. Returns the longest
    stage plan in epochs that a trial can get (from the combinations; from the single keys when there
    are too many combinations), the default epoch budget of ASHA.
    """
    singles = [_check(base, [(dim.key, value)], f"{space.source}: search key '{dim.key}' = {_short(value)}")
               for dim in space.dimensions for value in dim.probes()]
    probes = [d.probes() for d in space.dimensions]
    if len(space.dimensions) == 1 or math.prod(len(p) for p in probes) > MAX_COMBINATIONS:
        return max(c.total_epochs for c in singles)
    combos = []
    for combo in itertools.product(*probes):
        pairs = list(zip(space.keys, combo, strict=True))
        shown = ", ".join(f"{k}={_short(v)}" for k, v in pairs)
        combos.append(_check(base, pairs, f"{space.source}: the combination {shown}"))
    return max(c.total_epochs for c in combos)


def data_keys(space: SearchSpace) -> list[str]:
    """Searched keys that change the Ray datasets (data section, task, image size): trials then build their own."""
    def touches(key: str) -> bool:
        if key in LOADER_KEYS:
            return False
        return any(key == p or key.startswith(p + ".") or p.startswith(key + ".") for p in DATA_PREFIXES)

    return [k for k in space.keys if touches(k)]
