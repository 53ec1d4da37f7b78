"""Base model for every config section: strict keys, helpful errors.

Every section of a job spec is a :class:`StrictModel`. Unknown keys are rejected (``extra="forbid"``) and
:func:`format_validation_error` turns pydantic's error list into lines that name the dotted key and, for an
unknown key, the closest valid one.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["StrictModel", "ConfigError", "format_validation_error"]


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ConfigError(ValueError):
    """A job spec or override is invalid; the message names every bad key."""


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc`` (or ``None`` when it cannot be followed)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """First BaseModel inside ``list[X]``, ``X | None``, ``dict[str, X]`` … or the annotation itself."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _unwrap(arg)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    return annotation


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))


def format_validation_error(model: type[BaseModel], err: ValidationError, source: str = "config") -> str:
    """One line per problem: ``train.num_workrs: unknown key (did you mean 'train.num_workers'?)``."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = _dotted(loc) or "job"
        if e["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1]) if len(loc) > 1 else model
            valid = sorted(parent.model_fields) if parent is not None else []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            prefix = _dotted(loc[:-1])
            if close:
                hint = f"did you mean '{prefix + '.' if prefix else ''}{close[0]}'?"
            else:
                hint = f"valid keys here: {', '.join(valid)}"
            lines.append(f"  {key}: unknown key ({hint})")
        else:
            value = e.get("input")
            msg = e["msg"].removeprefix("Value error, ")
            if isinstance(value, (dict, list)) and len(repr(value)) > 80:
                lines.append(f"  {key}: {msg}")
            else:
                lines.append(f"  {key}: {msg} (got {value!r})")
    return f"invalid {source}:\n" + "\n".join(lines)
