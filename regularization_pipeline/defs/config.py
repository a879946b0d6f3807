"""Run config of ``regularized_orders``, generated from core's :class:`RunOptions`.

Every field, its default and its description are read from ``RunOptions`` so
they live in one place. The bounds are *described* here but enforced by ``RunOptions.parse``
inside the asset: a bound on a Dagster config field would fail the step with a
bare pydantic error before our code runs, and the retry policy would repeat it;
``RunOptions.parse`` turns it into ``dg.Failure(allow_retries=False)`` naming
the field.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
import pydantic

from regularization_pipeline.core.regularizer import RunOptions
from regularization_pipeline.defs.config_fields import fields_like

# The two run-time limits, one story. Soft: a run stops taking new orders after this long,
# finishes the order in hand and ends normally, so the next 5-minute tick finds the slot free.
DEFAULT_MAX_RUNTIME_SECONDS = 240.0
# Hard: the job's `dagster/max_runtime` tag (defs/jobs.py); run monitoring fails a run still
# going after it (hung, not slow) and frees its slot.
HARD_MAX_RUNTIME_SECONDS = 900
JOB_NAME = "regularize_completed_orders"
# dagster.yaml limits runs carrying this tag to one at a time: it is what stops
# manual launches (UI, CLI, GraphQL) overlapping, which the schedule cannot see. A run of
# regularized_orders launched without it (a Materialize, `dagster asset materialize`) takes it
# when the asset starts (defs/assets.py).
# With many shops the job does not carry it (it would run one shop at a time): the limit is then
# one run per value of `dagster/partition`, the shop (dagster.yaml, applyLimitPerUniqueValue).
CONCURRENCY_TAG = "regularization/concurrency"
# Said in the Launchpad field itself: the tag is shown beside it, not explained.
MAX_RUNTIME_NOTE = (
    f" In the job: {DEFAULT_MAX_RUNTIME_SECONDS:g} s by default, the soft limit (the run finishes "
    f"the order in hand and ends normally). The job's dagster/max_runtime tag "
    f"({HARD_MAX_RUNTIME_SECONDS} s) is the hard limit: run monitoring fails a run still going "
    "then (hung, not slow)."
)

# Where the job's defaults differ from RunOptions' (core's API keeps its own).
DEFAULT_OVERRIDES: dict[str, Any] = {"max_runtime_seconds": DEFAULT_MAX_RUNTIME_SECONDS}


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
    **fields_like(
        RunOptions,
        defaults=DEFAULT_OVERRIDES,
        notes={"max_runtime_seconds": MAX_RUNTIME_NOTE},
    ),
)
