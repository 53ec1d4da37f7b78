"""A job spec built on another: ``extends: <file>`` (relative to the spec's folder) names the spec it starts
from; its own sections are laid over it. Mappings merge key by key, anything else (lists such as ``stages``,
values) replaces what the base holds, and ``null`` sets a key to null (``lora: null`` drops LoRA).

::

    # jobs/voc_textseg_stage2.yaml
    extends: voc_textseg_stage1.yaml
    stages: [...]                 # replaces stage 1's list: name every stage the job runs
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from prism.config.schema import ConfigError

__all__ = ["EXTENDS_KEY", "deep_merge", "read_job_spec"]

EXTENDS_KEY = "extends"


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid on a copy of ``base``: mappings merge recursively, every other value replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_job_spec(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping a job spec file holds, with its ``extends`` chain resolved (the key itself removed)."""
    p = Path(path)
    if not p.is_file():
        via = f" (extended by {_chain[-1]})" if _chain else ""
        raise ConfigError(f"job spec not found: {p}{via}")
    resolved = p.resolve()
    if resolved in _chain:
        raise ConfigError("job specs extend each other in a cycle: " + " → ".join(str(c) for c in (*_chain, resolved)))
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p} must hold a mapping of sections, got {type(raw).__name__}")
    base = raw.pop(EXTENDS_KEY, None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{p}: {EXTENDS_KEY} must name one job spec file (relative to {p.parent}), got {base!r}")
    return deep_merge(read_job_spec(p.parent / base, (*_chain, resolved)), raw)
