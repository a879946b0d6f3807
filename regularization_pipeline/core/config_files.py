"""Reading operator-written settings: a YAML file's top-level mapping, and a pydantic model
validated into one readable ConfigurationError (fields named, values never echoed).

Used by every settings model of the package: the schema mapping, provider settings, publishers,
run options.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from regularization_pipeline.core.exceptions import ConfigurationError

M = TypeVar("M", bound=BaseModel)


# Settings files are a few kilobytes; a bigger one is the wrong file (and a 50 MB one took
# a minute to parse). Read through one descriptor, never past this.
MAX_SETTINGS_FILE_BYTES = 1024 * 1024


def read_yaml_mapping(path: str | os.PathLike[str], what: str) -> dict:
    """A YAML file's top-level mapping, or a ConfigurationError naming the file and the problem.

    Only a regular file of at most :data:`MAX_SETTINGS_FILE_BYTES` is read (a FIFO, a device
    such as ``/dev/zero`` or a directory is refused without reading it), and no message
    quotes the file's content: the path may name any file the process can read.
    """
    path = Path(path)
    shown = repr(str(path))
    try:
        text = _read_small_regular_file(path, what, shown).decode("utf-8")
        raw = yaml.safe_load(text) or {}
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {shown}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{what} {shown} is not UTF-8 text") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigurationError(f"{what} {shown} is not valid YAML{where}") from exc
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{what} {shown} must contain a mapping at the top level")
    return raw


def _read_small_regular_file(path: Path, what: str, shown: str) -> bytes:
    # O_NONBLOCK: opening a named pipe with no writer must not hang; fstat then refuses it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigurationError(f"{what} {shown} is not a regular file")
        if info.st_size > MAX_SETTINGS_FILE_BYTES:
            raise ConfigurationError(
                f"{what} {shown} is larger than {MAX_SETTINGS_FILE_BYTES // 1024} KiB"
            )
        data = os.read(fd, MAX_SETTINGS_FILE_BYTES + 1)
        if len(data) > MAX_SETTINGS_FILE_BYTES:  # grew since fstat
            raise ConfigurationError(
                f"{what} {shown} is larger than {MAX_SETTINGS_FILE_BYTES // 1024} KiB"
            )
        return data
    finally:
        os.close(fd)


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
