"""Run config of ``regularized_orders``, generated from core's :class:`RunOptions`.

Every field, its default and its description are read from ``RunOptions`` so
they live in one place. The bounds are *described* here but enforced by ``RunOptions.parse``
inside the asset: a bound on a Dagster config field would fail the step with a
bare pydantic error before our code runs, and the retry policy would repeat it;
``RunOptions.parse`` turns it into ``dg.Failure(allow_retries=False)`` naming
the field.
"""

from __future__ import annotations

import datetime as dt
import types
import typing
from typing import Any

import annotated_types as at
import dagster as dg
import pydantic
from pydantic import Field

from regularization_pipeline.core.regularizer import RunOptions

_BOUND_SYMBOLS = {at.Ge: (">=", "ge"), at.Gt: (">", "gt"), at.Le: ("<=", "le"), at.Lt: ("<", "lt")}

# The two run-time limits, one story. Soft: a run stops taking new orders after this long,
# finishes the order in hand and ends normally, so the next 5-minute tick finds the slot free.
DEFAULT_MAX_RUNTIME_SECONDS = 240.0
# Hard: the job's `dagster/max_runtime` tag (defs/jobs.py); run monitoring fails a run still
# going after it (hung, not slow) and frees its slot.
HARD_MAX_RUNTIME_SECONDS = 900
# Said in the Launchpad field itself: the tag is shown beside it, not explained.
MAX_RUNTIME_NOTE = (
    f" In the job: {DEFAULT_MAX_RUNTIME_SECONDS:g} s by default, the soft limit (the run finishes "
    f"the order in hand and ends normally). The job's dagster/max_runtime tag "
    f"({HARD_MAX_RUNTIME_SECONDS} s) is the hard limit: run monitoring fails a run still going "
    "then (hung, not slow)."
)
# Where the job's defaults differ from RunOptions' (core's API keeps its own).
DEFAULT_OVERRIDES: dict[str, Any] = {"max_runtime_seconds": DEFAULT_MAX_RUNTIME_SECONDS}


def bounds_of(name: str) -> str:
    """RunOptions' bounds on a field as text, e.g. ``>= 1, <= 10000000``."""
    parts = []
    for meta in RunOptions.model_fields[name].metadata:
        for kind, (symbol, attr) in _BOUND_SYMBOLS.items():
            if isinstance(meta, kind):
                parts.append(f"{symbol} {getattr(meta, attr)}")
    return ", ".join(parts)


def dagster_config_type(annotation: Any) -> Any:
    """RunOptions' type of a field as a Dagster config type: datetimes become ISO 8601 strings."""
    if annotation is dt.datetime:
        return str
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and dt.datetime in args:
        return str | None
    return annotation


def _field_like_run_options(name: str) -> Any:
    info = RunOptions.model_fields[name]
    bounds = bounds_of(name)
    description = (info.description or name) + (f" Must be {bounds}." if bounds else "")
    if name == "max_runtime_seconds":
        description += MAX_RUNTIME_NOTE
    return Field(default=DEFAULT_OVERRIDES.get(name, info.default), description=description)


class _RegularizeConfigBase(dg.Config):
    """How one run of the regularization behaves (validated by core's RunOptions)."""

    def to_run_options(self) -> RunOptions:
        """Validate every field against RunOptions; raises ConfigurationError naming the fields."""
        return RunOptions.parse(**self.model_dump())


# One field per RunOptions field, generated so that a field added to core reaches
# the run config (and the UI) without a second list to keep in step.
RegularizeConfig = pydantic.create_model(
    "RegularizeConfig",
    __base__=_RegularizeConfigBase,
    __module__=__name__,
    __doc__=_RegularizeConfigBase.__doc__,
    **{
        name: (dagster_config_type(info.annotation), _field_like_run_options(name))
        for name, info in RunOptions.model_fields.items()
    },
)
