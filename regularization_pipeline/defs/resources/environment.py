"""Reading resource settings from the environment: a secret as ``dg.EnvVar`` (the UI shows
the variable's name, never its value), plain settings, numbers and booleans refused with the
variable's name, and a resource built leniently so one bad setting never stops the code
location from loading."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg
from pydantic import ValidationError


def secret_from_env(name: str) -> dg.EnvVar | None:
    """The variable, read at run time (the UI shows its name), when it is set where the code loads."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def setting_from_env(name: str) -> str | None:
    """A plain setting (not a secret), or None while it is unset or empty."""
    return os.environ.get(name, "").strip() or None


def list_from_env(name: str) -> list[str]:
    """A comma-separated setting as a list, empty items left out."""
    return [item.strip() for item in (setting_from_env(name) or "").split(",") if item.strip()]


def number_from_env(name: str, kind: type = float) -> Any:
    """A number (``kind`` float or int) set in the environment; None while it is empty (the
    resource's default then)."""
    text = setting_from_env(name)
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{name} must be {what}, got {text!r}") from None


def integer_from_env(name: str) -> int | None:
    return number_from_env(name, int)


def boolean_from_env(name: str) -> bool | None:
    """true/false (also 1/0, yes/no, on/off); None while it is empty. A typo is an error, never "off"."""
    text = setting_from_env(name)
    if text is None:
        return None
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {text!r}")


def build_leniently(
    cls: type[dg.ConfigurableResource],
    values: dict[str, Any],
    env_of: dict[str, str],
    unread: dict[str, str],
) -> tuple[Any, dict[str, str]]:
    """``cls(**values)`` and what could not be read, by field: each value the resource refuses
    is left out (its default used) with a line naming its variable, so a bad setting never
    stops the code location from loading."""
    values = {k: v for k, v in values.items() if v is not None}
    while True:
        try:
            return cls(**values), unread
        except ValidationError as exc:
            refused = [e for e in exc.errors() if e["loc"] and e["loc"][0] in values]
            if not refused:
                raise
            for error in refused:
                field = str(error["loc"][0])
                unread[field] = (
                    f"{env_of.get(field, field)}={values.pop(field, None)!r} refused "
                    f"({error['msg']})"
                )


def read_setting(parse, name: str, field: str, unread: dict[str, str]) -> Any:
    """``parse(name)``; a value it refuses is noted under ``field`` (its default used then),
    never a crash."""
    try:
        return parse(name)
    except ValueError as exc:
        unread[field] = str(exc)
        return None


class ReadFromEnvironment:
    """A resource built from its variables (``read_env``), which names, whenever it is asked,
    the variables it could not read.

    The lines are not a field: a field is config the Launchpad shows and lets one edit. They
    are read again from the environment instead (the code location and each run load the same
    one), and only for the fields still at their default: a value set in the Launchpad stands
    in for the variable it replaces."""

    @classmethod
    def read_env(cls) -> tuple[Any, dict[str, str]]:
        raise NotImplementedError

    @classmethod
    def from_env(cls) -> Any:
        return cls.read_env()[0]

    def unread_variables(self) -> list[str]:
        """One line per variable set but not readable, naming it (a secret's value never)."""
        fields = type(self).model_fields  # type: ignore[attr-defined]
        return [
            line
            for field, line in self.read_env()[1].items()
            if getattr(self, field) == fields[field].get_default(call_default_factory=True)
        ]
