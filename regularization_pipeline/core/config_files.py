"""Reading operator-written settings: a YAML file's top-level mapping, and a pydantic model
validated into one readable ConfigurationError (fields named, values never echoed).

Used by every settings model of the package: the schema mapping, provider settings, publishers,
run options.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from regularization_pipeline.core.errors import ConfigurationError

M = TypeVar("M", bound=BaseModel)


def read_yaml_mapping(path: str | os.PathLike[str], what: str) -> dict:
    """A YAML file's top-level mapping, or a ConfigurationError naming the file and the problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {str(path)!r}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{what} {str(path)!r} is not UTF-8 text") from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{what} {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{what} {str(path)!r} must contain a mapping at the top level")
    return raw


def validate_or_explain(model: type[M], values: dict, what: str) -> M:
    """``model`` from ``values``, or one ConfigurationError naming every offending field.

    Messages name fields and what is wrong, never the values given: one of them may be a secret.
    """
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ConfigurationError(f"invalid {what}: {format_validation_error(exc)}") from exc


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the field path, e.g. ``statuses.order_pending: ...``."""
    parts = []
    for err in exc.errors():
        message = err["msg"].removeprefix("Value error, ")
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
