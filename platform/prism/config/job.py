"""Typed job config: YAML file + dotted ``key=value`` overrides, validated before any work starts.

A job spec (``jobs/*.yaml``) has the sections ``task``, ``backbone``, ``lora``, ``stages``, ``data``,
``train`` and ``tracking``. :func:`load_config` reads it, applies overrides such as
``train.num_workers=2`` or ``stages.1.lr.lora=3e-4``, and validates the result; any unknown key or bad value
raises :class:`~prism.config.schema.ConfigError` naming the key (and the closest valid key for typos).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from prism.config.data import DataConfig
from prism.config.extends import read_job_spec
from prism.config.schema import ConfigError, StrictModel, format_validation_error
from prism.tasks.registry import list_tasks, task_config_classes, unknown_task_message

__all__ = [
    "BackboneConfig",
    "ConfigError",
    "JobConfig",
    "LoraSettings",
    "LoraSiteSettings",
    "TaskConfigUnion",
    "StageConfig",
    "TrackingConfig",
    "TrainConfig",
    "apply_overrides",
    "dump_config",
    "load_config",
]

class BackboneConfig(StrictModel):
    """Which foundation model to adapt and how its weights are obtained."""

    name: str = Field(default="dinov2_vits14", description="Registered backbone name (see `prism backbones`).")
    pretrained: bool = Field(default=False, description="Load the hub's pretrained weights (needs internet).")
    weights: Path | None = Field(default=None, description="Local weights file (.safetensors/.pth), offline.")
    img_size: int | None = Field(default=None, ge=14, description="Input size; a multiple of the patch size.")
    seed: int = Field(default=0, description="Seed of the random init when no weights are loaded.")

    @model_validator(mode="after")
    def _one_weight_source(self) -> BackboneConfig:
        if self.pretrained and self.weights is not None:
            raise ValueError("set either backbone.pretrained or backbone.weights, not both")
        return self


class LoraSiteSettings(StrictModel):
    """LoRA at one site inside a task's heads (a site the task offers, e.g. ``decoder``); unset values
    take the ``lora`` section's."""

    rank: int | None = Field(default=None, ge=1)
    alpha: float | None = Field(default=None, gt=0)
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0)
    targets: list[str] | None = Field(
        default=None, min_length=1, description="Module-name suffixes to adapt; None = the task's default."
    )


class LoraSettings(StrictModel):
    """LoRA adapters (peft) at named sites: the backbone's last K blocks, and sites inside a task's heads."""

    rank: int = Field(default=8, ge=1)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    backbone: bool = Field(default=True, description="Adapt the backbone (site 'backbone').")
    last_k: int | None = Field(default=None, ge=1, description="Adapt the backbone's last K blocks; None = all.")
    targets: list[Literal["attn", "mlp"]] = Field(default_factory=lambda: ["attn"], min_length=1)
    sites: dict[str, LoraSiteSettings] = Field(
        default_factory=dict,
        description="Sites inside the task's heads to adapt too, {site: {rank, alpha, dropout, targets}}; the "
        "task lists the sites it offers (e.g. SAM's mask decoder: decoder).",
    )

    @field_validator("sites")
    @classmethod
    def _site_names(cls, v: dict[str, LoraSiteSettings]) -> dict[str, LoraSiteSettings]:
        bad = [k for k in v if not _SITE.fullmatch(k) or k == "backbone"]
        if bad:
            raise ValueError(f"site names must match [a-z][a-z0-9_]* and not be 'backbone', got {bad}")
        return v

    def site_names(self) -> list[str]:
        """The LoRA sites this section creates: ``backbone`` (if adapted) and the head sites."""
        return (["backbone"] if self.backbone else []) + sorted(self.sites)


_SITE = re.compile(r"[a-z][a-z0-9_]*")
LR_KEY = re.compile(r"head|backbone|lora|(?:lora|head)\.[a-z][a-z0-9_]*")
"""Learning-rate group keys: ``head``, ``backbone``, ``lora`` (every LoRA site), ``lora.<site>`` (one site,
e.g. ``lora.backbone``, ``lora.decoder``) and ``head.<site>`` (the base weights of a head site)."""


class StageConfig(StrictModel):
    """One stage of the plan: which parameters train, for how long, at which learning rates."""

    name: str | None = Field(default=None, description="Display name; defaults to the kind.")
    kind: Literal["probe", "lora", "unfreeze"]
    epochs: int = Field(ge=1)
    lr: dict[str, float] = Field(
        description="Learning rate per parameter group: head, backbone, lora (every LoRA site), lora.<site> "
        "(one site, overrides lora), head.<site> (a head site's base weights; they train only when named). "
        "Checked against the built model, which lists its groups."
    )
    lora_sites: list[str] | None = Field(
        default=None, description="lora / unfreeze stages: the LoRA sites that train; None = every site."
    )
    blocks: Literal["all"] | int | list[int] = Field(
        default="all", description="unfreeze only: the blocks that train: 'all' (embeddings too), the last N "
        "blocks, or a list of block indices."
    )
    frozen_blocks: int | list[int] | None = Field(
        default=None, description="unfreeze only, instead of blocks: the blocks that stay frozen, the first N "
        "or a list of indices; every other block trains, the embeddings stay frozen (0 = every block trains)."
    )
    weight_decay: float = Field(default=0.0, ge=0.0)

    @field_validator("lr")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = [k for k in v if not LR_KEY.fullmatch(k)]
        if unknown:
            raise ValueError(f"unknown learning-rate group(s) {unknown}; use head, backbone, lora, lora.<site> "
                             "or head.<site>")
        bad = {k: x for k, x in v.items() if not x > 0}
        if bad:
            raise ValueError(f"learning rates must be > 0, got {bad}")
        return v

    @model_validator(mode="after")
    def _defaults(self) -> StageConfig:
        if self.name is None:
            self.name = self.kind
        needed = {"probe": {"head"}, "lora": {"head"}, "unfreeze": {"head", "backbone"}}[self.kind]
        missing = sorted(needed - set(self.lr))
        if self.kind == "lora" and not any(k == "lora" or k.startswith("lora.") for k in self.lr):
            missing.append("lora")
        if self.frozen_blocks is not None and (self.kind != "unfreeze" or self.blocks != "all"):
            raise ValueError(f"stage '{self.name}' ({self.kind}): frozen_blocks is for unfreeze stages, instead of "
                             "blocks (give one of them)")
        if missing:
            raise ValueError(f"stage '{self.name}' ({self.kind}) needs lr for {missing}, got {sorted(self.lr)}"
                             + (" (lr.lora covers every LoRA site; lr.lora.<site> one site)" if "lora" in missing else ""))
        return self


class TrainConfig(StrictModel):
    """Ray Train scaling, precision, checkpoint selection, early stopping and resume."""

    num_workers: int = Field(default=1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        default="PACK", description="Where Ray puts the workers (the placement group of the worker group): PACK = "
        "as few nodes as fit, SPREAD = across nodes where possible, STRICT_PACK = all on one node, STRICT_SPREAD "
        "= each on a different node (the job waits until num_workers nodes have room). Case-insensitive.",
    )
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        default="auto", description="auto = bf16 on GPUs that support it, else fp16 on GPU, off on CPU; "
        "bf16 = bf16 on GPU and CPU (fast on CPUs with AVX512-BF16 or AMX)."
    )
    metric: str | None = Field(
        default=None, description="Metric that picks the best checkpoint; None = the task's default metric."
    )
    mode: Literal["max", "min"] | None = Field(default=None, description="None = the task's default mode.")
    early_stop_patience: int | None = Field(
        default=None, ge=1, description="End a stage after this many epochs without improvement."
    )
    resume_from: Path | None = Field(default=None, description="Checkpoint directory to resume from.")
    storage_path: str = Field(
        default="prism_runs",
        description="Ray Train storage for checkpoints: a local folder or a URI (s3://, gs://) all nodes reach.",
    )
    checkpoints_to_keep: int = Field(default=2, ge=1)
    max_failures: int = Field(
        default=0, ge=-1, description="Worker-group failures survived by restarting the group from the latest "
        "checkpoint (a lost worker or node, e.g. spot instances); 0 = fail at once, -1 = retry forever. Ray "
        "retries any error of the training function, a bug or an out-of-memory error too.",
    )
    grad_clip: float | None = Field(default=1.0, gt=0)
    seed: int = Field(
        default=0, description="Seeds model init, the per-epoch shuffle and the augmentation of every row: a "
        "rerun gives the same curve where Ray allows (1 worker, data.deterministic).",
    )

    @field_validator("placement_strategy", mode="before")
    @classmethod
    def _strategy_upper(cls, v: Any) -> Any:
        return v.strip().upper() if isinstance(v, str) else v


class TrackingConfig(StrictModel):
    """MLflow experiment, run name and registered model."""

    experiment: str = "prism"
    run_name: str | None = None
    model_name: str | None = Field(default=None, description="Registered model name; None = do not register.")
    alias: str = Field(default="champion", description="Alias moved to a new version only when it is better.")
    tracking_uri: str | None = Field(default=None, description="Overrides MLFLOW_TRACKING_URI.")
    artifact_location: str | None = Field(
        default=None,
        description="Where a new experiment keeps its artifacts (e.g. s3://bucket/prism); required for a new "
        "experiment on a database store (postgresql+psycopg2://…); null = mlartifacts/ beside an embedded "
        "mlflow.db, or the tracking server's choice. An existing experiment keeps its location.",
    )


def _task_union() -> Any:
    """``task``: the registered task configs, discriminated by ``name``."""
    classes = task_config_classes()
    if len(classes) == 1:
        return classes[0]
    return Annotated[Union[tuple(classes)], Field(discriminator="name")]  # noqa: UP007


TaskConfigUnion = _task_union()


class JobConfig(StrictModel):
    """A whole job: which task, on which backbone and adapters, trained by which plan, on which data."""

    task: TaskConfigUnion
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    lora: LoraSettings | None = Field(default_factory=LoraSettings, description="null = no LoRA.")
    stages: list[StageConfig] = Field(
        default_factory=list, description="The training plan; empty for a task that does not train."
    )
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="before")
    @classmethod
    def _known_task(cls, raw: Any) -> Any:
        task = raw.get("task") if isinstance(raw, dict) else None
        if isinstance(task, dict) and task.get("name") not in list_tasks():
            raise ValueError(f"task.name: {unknown_task_message(task.get('name'))}")
        return raw

    @model_validator(mode="after")
    def _plan_consistent(self) -> JobConfig:
        trains = type(self.task).trains
        if trains and not self.stages:
            raise ValueError(f"task '{self.task.name}' trains: give stages (e.g. a probe stage)")
        if not trains and self.stages:
            raise ValueError(f"task '{self.task.name}' does not train; set stages: []")
        sources = type(self.task).data_sources
        if self.data.source is None:
            self.data.source = sources[0]
        if self.data.source not in sources:
            raise ValueError(f"data.source: task '{self.task.name}' reads {' or '.join(sources)}, not "
                             f"'{self.data.source}'")
        if self.data.source == "webdataset" and not self.data.webdataset.train:
            raise ValueError("data.webdataset.train: give the training shards (data.source is webdataset)")
        if self.data.synthetic.generator is None:
            self.data.synthetic.generator = type(self.task).synthetic_generator
        self.task.complete(self.data)
        if self.train.metric is None:
            self.train.metric = type(self.task).default_metric
        if self.train.mode is None:
            self.train.mode = type(self.task).default_mode
        for i, st in enumerate(self.stages):
            if st.kind == "lora" and self.lora is None:
                raise ValueError(f"stages.{i} is a lora stage but lora is null; configure lora: {{rank: …}}")
            if (st.kind == "unfreeze" and self.lora is not None and self.lora.site_names()
                    and not any(k == "lora" or k.startswith("lora.") for k in st.lr)):
                raise ValueError(f"stages.{i} ({st.name}) unfreezes with LoRA present: give lr.lora too")
            sites = self.lora.site_names() if self.lora is not None else []
            unknown = sorted(set(st.lora_sites or []) - set(sites))
            if unknown:
                raise ValueError(f"stages.{i} ({st.name}): lora_sites {unknown} are not configured; LoRA sites: "
                                 f"{sites or 'none'}")
        return self

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.path=value (e.g. train.num_workers=2)")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        return parts, yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"override '{item}': the value of {'.'.join(parts)} is not valid YAML ({problem}); "
                          "quote a text value, e.g. key='a: b'") from None


def _index(part: str, length: int) -> int | None:
    """``part`` as an index into a list of ``length`` items (ASCII digits, in range), else None."""
    return int(part) if part.isascii() and part.isdigit() and int(part) < length else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``a.b.c=value`` applied (value parsed as YAML)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        parts, value = _parse_override(item)
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                index = _index(part, len(node))
                if index is None:
                    raise ConfigError(f"override '{item}': '{where}' — index out of range (length {len(node)})")
                node = node[index]
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override '{item}': '{where}' is a value, not a section")
        last = parts[-1]
        if isinstance(node, list):
            index = _index(last, len(node))
            if index is None:
                raise ConfigError(f"override '{item}': index '{last}' out of range (length {len(node)})")
            node[index] = value
        else:
            node[last] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                raw: dict[str, Any] | None = None) -> JobConfig:
    """Read a YAML job spec (its ``extends`` chain resolved, :mod:`prism.config.extends`) or take a ``raw``
    dict, apply overrides, validate. Raises :class:`ConfigError`."""
    if raw is None:
        if path is None:
            raise ConfigError("give a job spec path or a raw config dict")
        raw = read_job_spec(path)
    merged = apply_overrides(raw, list(overrides or []))
    try:
        return JobConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(format_validation_error(JobConfig, e, source=str(path or "config"))) from None


def dump_config(cfg: JobConfig) -> str:
    """The resolved config as YAML (what MLflow stores and ``prism config`` prints)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
