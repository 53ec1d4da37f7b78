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


def _internal(part: Any) -> bool:
    """A ``loc`` part pydantic adds for its own machinery (``function-after[...]``, ``list[...]``)."""
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def _member(annotation: Any, key: str, tag: str) -> type[BaseModel] | None:
    """The model of a tagged union ``annotation`` whose ``key`` field holds ``tag``."""
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            field = arg.model_fields.get(key)
            if field is not None and (field.default == tag or tag in (getattr(field.annotation, "__args__", ()) or ())):
                return arg
        elif (found := _member(arg, key, tag)) is not None:
            return found
    return None


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], list[type[BaseModel] | None]]:
    """``loc`` as the user wrote the key and, per part, the model class that owns it (None where it cannot be
    followed). A tagged union's tag, which pydantic puts in ``loc`` (``task.multihead.heads``), is left out."""
    parts: list[Any] = []
    owners: list[type[BaseModel] | None] = []
    current: Any = model
    i = 0
    while i < len(loc):
        part, i = loc[i], i + 1
        owner = current if isinstance(current, type) and issubclass(current, BaseModel) else None
        parts.append(part)
        owners.append(owner)
        if isinstance(part, int) or _internal(part):
            continue  # a list item or pydantic's machinery: the same model goes on
        field = owner.model_fields.get(str(part)) if owner is not None else None
        current = _unwrap(field.annotation) if field is not None else None
        if field is not None and isinstance(field.discriminator, str) and i < len(loc) and isinstance(loc[i], str):
            member = _member(field.annotation, field.discriminator, loc[i])
            if member is not None:
                current, i = member, i + 1
    return tuple(parts), owners


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
    return ".".join(str(p) for p in loc if not _internal(p))


def format_validation_error(model: type[BaseModel], err: ValidationError, source: str = "config") -> str:
    """One line per problem: ``train.num_workrs: unknown key (did you mean 'train.num_workers'?)``."""
    lines = []
    for e in err.errors():
        loc, owners = _walk(model, tuple(e["loc"]))
        key = _dotted(loc) or "job"
        if e["type"] == "extra_forbidden":
            parent = owners[-1] if owners else model
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
