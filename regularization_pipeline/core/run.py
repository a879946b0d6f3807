"""One run: its options, the outcome of each order it decided, and its summary.

:class:`RunOptions` is validated once, here: every bound (``limit``, ``sleep``,
``lookback_hours`` ...) and the order of ``since`` and ``until``. The scan
window built from it (:meth:`RunOptions.window`) trusts these values. The same
fields are the Dagster run config of ``regularized_orders`` (``defs/config.py``
generates it from this class).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from regularization_pipeline.core import verdicts
from regularization_pipeline.core.clock import as_naive_utc
from regularization_pipeline.core.config_files import validate_or_explain
from regularization_pipeline.core.detection.window import DEFAULT_MIN_AGE_MINUTES, ScanWindow
from regularization_pipeline.core.verdicts import OrderOutcome, held_metadata

# A run keeps counts and the first outcomes only, never a record per order (``limit`` allows
# 10,000,000); every decision is in the audit trail, and a progress hook sees each outcome.
OUTCOME_SAMPLE_SIZE = 100


class RunOptions(BaseModel):
    """How one run behaves. The same fields are the Dagster run config of ``regularized_orders``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(
        50,
        ge=1,
        le=10_000_000,
        description="Maximum number of orders to act on in this run (the original --limit); the orders whose payment completed first come first.",
    )
    sleep: float = Field(
        2.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="Seconds to wait between two orders, to spare the application and the provider (the original --sleep).",
    )
    lookback_hours: float | None = Field(
        None,
        gt=0,
        le=87_600,
        allow_inf_nan=False,
        description="Only payments completed within this many hours; older orphans are counted as aged out, not dropped silently.",
    )
    min_age_minutes: float = Field(
        DEFAULT_MIN_AGE_MINUTES,
        ge=0,
        le=525_600,
        allow_inf_nan=False,
        description="Grace period: payments completed more recently are left to their webhook.",
    )
    dry_run: bool = Field(
        False,
        description="Decide and audit as 'dry-run' without changing any order or writing any event.",
    )
    batch_size: int = Field(
        50,
        ge=1,
        le=10_000,
        description="How many orders one batch claims, verifies and flips in one transaction (batched mode).",
    )
    max_attempts: int = Field(
        5,
        ge=1,
        le=1_000,
        description="Failed attempts after which an order is quarantined instead of retried.",
    )
    since: dt.datetime | None = Field(
        None, description="Only payments completed at or after this UTC time (ISO 8601)."
    )
    until: dt.datetime | None = Field(
        None, description="Only payments completed at or before this UTC time (ISO 8601)."
    )
    max_runtime_seconds: float | None = Field(
        None,
        gt=0,
        le=86_400,
        allow_inf_nan=False,
        description="Stop taking new orders after this many seconds; the rest waits for the next run.",
    )
    mode: Literal["auto", "per_order", "batched"] = Field(
        "auto",
        description=(
            "per_order: one transaction per order, sleeping between orders (the original's pace). "
            "batched: claim, verify and flip batch_size orders per transaction, sleeping between batches; "
            "a database error in a batch falls back to per_order for it. "
            "auto: batched when sleep is 0 and no provider verification is configured, else per_order."
        ),
    )

    @model_validator(mode="after")
    def _ordered_bounds(self) -> RunOptions:
        if self.since and self.until and as_naive_utc(self.since) >= as_naive_utc(self.until):
            raise ValueError("since must be earlier than until")
        return self

    @classmethod
    def parse(cls, **values: Any) -> RunOptions:
        """Validate, naming every offending field (never its value) in one ConfigurationError."""
        return validate_or_explain(cls, values, "run options")

    def bounds_history(self) -> bool:
        """Whether a lookback, ``since`` or ``until`` leaves part of the payment history out."""
        return self.lookback_hours is not None or self.since is not None or self.until is not None

    def window(self, now: dt.datetime) -> ScanWindow:
        return ScanWindow(
            now=now,
            min_age_minutes=self.min_age_minutes,
            lookback_hours=self.lookback_hours,
            since=self.since,
            until=self.until,
        )


@dataclass
class RunSummary:
    run_id: str
    dry_run: bool = False
    limit: int = 50
    found: int = 0
    oldest_orphan_age_minutes: float = 0.0
    aged_out: int = 0
    processed: int = 0
    regularized: int = 0
    would_regularize: int = 0
    skipped: int = 0
    failed: int = 0
    quarantined: int = 0
    inconsistent: int = 0
    inconsistent_by_kind: dict[str, int] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    stopped_by_deadline: bool = False
    stopped_by_provider: bool = False
    elapsed_seconds: float = 0.0
    outcomes: list[OrderOutcome] = field(default_factory=list)  # the first OUTCOME_SAMPLE_SIZE

    def record(self, outcome: OrderOutcome) -> None:
        if len(self.outcomes) < OUTCOME_SAMPLE_SIZE:
            self.outcomes.append(outcome)
        if outcome.acted:
            self.processed += 1
        counter = {
            verdicts.REGULARIZED: "regularized",
            verdicts.DRY_RUN: "would_regularize",
            verdicts.SKIPPED: "skipped",
            verdicts.FAILED: "failed",
            verdicts.QUARANTINED: "quarantined",
            verdicts.INCONSISTENT: "inconsistent",
        }[outcome.action]
        setattr(self, counter, getattr(self, counter) + 1)
        if outcome.action == verdicts.INCONSISTENT and outcome.kind == verdicts.PROVIDER_FAILED:
            self.inconsistent_by_kind[verdicts.PROVIDER_FAILED] = (
                self.inconsistent_by_kind.get(verdicts.PROVIDER_FAILED, 0) + 1
            )

    @property
    def error_rate(self) -> float:
        return (
            round((self.failed + self.quarantined) / self.processed, 4) if self.processed else 0.0
        )

    def as_metrics(self) -> dict[str, float | int]:
        """Numeric figures with stable keys, for Dagster metadata and the CLI table."""
        metrics: dict[str, float | int] = {
            "orphans_found": self.found,
            "oldest_orphan_age_minutes": self.oldest_orphan_age_minutes,
            "aged_out": self.aged_out,
            "processed": self.processed,
            "regularized": self.regularized,
            "would_regularize": self.would_regularize,
            "skipped": self.skipped,
            "failed": self.failed,
            "quarantined": self.quarantined,
            "inconsistent": self.inconsistent,
            "error_rate": self.error_rate,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }
        for kind in verdicts.INCONSISTENCY_KINDS:
            metrics[f"inconsistent_{kind}"] = self.inconsistent_by_kind.get(kind, 0)
        metrics.update(held_metadata(self.held))
        metrics["orphans_beyond_limit"] = self.beyond_limit
        return metrics

    def headline(self) -> str:
        """The run in one line, only the figures that are not zero: what a reader of the
        materialization wants first, above the stable numeric keys the plots need."""
        acted = [
            f"{n} {word}"
            for n, word in (
                (self.regularized, "regularized"),
                (self.would_regularize, "would be regularized (dry run)"),
                (self.skipped, "skipped"),
                (self.failed, "failed"),
                (self.quarantined, "quarantined"),
            )
            if n
        ]
        line = f"{', '.join(acted) or 'nothing done'} of {self.found} orphan(s) found"
        if self.found:
            line += f", the oldest paid {self.oldest_orphan_age_minutes:.0f} min before the run"
        extra = [f"{self.beyond_limit} left beyond the limit"] if self.beyond_limit else []
        extra += [f"{self.aged_out} aged out of the window"] if self.aged_out else []
        held = {reason: n for reason, n in self.held.items() if n}
        if held:
            extra.append(
                "held: " + ", ".join(f"{n} {reason}" for reason, n in sorted(held.items()))
            )
        return "; ".join([line, *extra])

    @property
    def beyond_limit(self) -> int:
        """Orphans found but not evaluated because the run reached its limit."""
        return max(self.found - self.processed, 0) if self.processed >= self.limit else 0


ProgressHook = Callable[[OrderOutcome, RunSummary, int], None]
