"""Dagster config fields generated from a core pydantic model, so a setting is declared once:
in core, with its default, its description and its bounds. The run config
(``defs/config.py``, from ``RunOptions``) and the event publisher resource (from
``PublisherSettings``) are built this way."""

from __future__ import annotations

import datetime as dt
import functools
import operator
import types
import typing
from typing import Any

import annotated_types as at
import pydantic
from pydantic import Field

_BOUND_SYMBOLS = {at.Ge: (">=", "ge"), at.Gt: (">", "gt"), at.Le: ("<=", "le"), at.Lt: ("<", "lt")}


def bounds_of(name: str, model: type[pydantic.BaseModel]) -> str:
    """A core model's bounds on a field as text, e.g. ``>= 1, <= 10000000``."""
    parts = []
    for meta in model.model_fields[name].metadata:
        for kind, (symbol, attr) in _BOUND_SYMBOLS.items():
            if isinstance(meta, kind):
                parts.append(f"{symbol} {getattr(meta, attr)}")
    return ", ".join(parts)


def dagster_config_type(annotation: Any) -> Any:
    """A core model's type of a field as a Dagster config type: datetimes become ISO 8601
    strings, a secret a string (``dg.EnvVar`` fills it), a choice of words a string (the core
    model names the choices when it validates)."""
    if annotation is dt.datetime:
        return str
    if annotation is pydantic.SecretStr or typing.get_origin(annotation) is typing.Literal:
        return str
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        converted = tuple(dict.fromkeys(dagster_config_type(a) for a in args))
        return functools.reduce(operator.or_, converted)
    if origin is list:
        return list[dagster_config_type(args[0])]
    return annotation


def fields_like(
    model: type[pydantic.BaseModel],
    *,
    renames: dict[str, str] | None = None,
    defaults: dict[str, Any] | None = None,
    notes: dict[str, str] | None = None,
) -> dict[str, tuple[Any, Any]]:
    """One Dagster config field per field of a core ``model``, for ``pydantic.create_model``:
    same default, same description with its bounds described (``notes`` adds to it), named as
    ``renames`` says. The bounds are enforced by the model itself where the values are used,
    so a bad one is one readable ConfigurationError, never a bare pydantic error."""
    renames, defaults, notes = renames or {}, defaults or {}, notes or {}
    fields = {}
    for name, info in model.model_fields.items():
        bounds = bounds_of(name, model)
        description = (info.description or name) + (f" Must be {bounds}." if bounds else "")
        default = defaults.get(name, info.get_default(call_default_factory=True))
        field = Field(default=default, description=description + notes.get(name, ""))
        fields[renames.get(name, name)] = (dagster_config_type(info.annotation), field)
    return fields
