"""Attempts and quarantine: how often each order failed, and which orders runs leave alone.

One row per order in ``<prefix>order_attempts``. A failure is counted in a
transaction of its own (the order's own transaction rolled back); after
``max_attempts`` failures the order is quarantined: reported, never retried
until an operator releases it. A payment the provider calls failed or refunded
holds the order the same way, without counting a failure.
"""

from __future__ import annotations

import logging
from typing import Any

from regularization_pipeline.core import verdicts

# The rows themselves are counted one level down, where the write step counts them too.
from regularization_pipeline.core.decisions.attempt_rows import note_attempt as note_attempt
from regularization_pipeline.core.decisions.attempt_rows import (
    regularized_reset as regularized_reset,
)
from regularization_pipeline.core.decisions.attempt_rows import (
    reset_after_regularization as reset_after_regularization,
)
from regularization_pipeline.core.decisions.attempt_rows import (
    without_quarantined as without_quarantined,
)
from regularization_pipeline.core.decisions.audit import Decision, write_audit
from regularization_pipeline.core.decisions.context import (
    PROVIDER_UNAVAILABLE,
    OrderOutcome,
    RunContext,
)
from regularization_pipeline.core.decisions.verification import Verdict
from regularization_pipeline.core.errors import ConfigurationError, describe_error
from regularization_pipeline.core.shop.engine import check_reachable

log = logging.getLogger("regularization_pipeline.regularizer")


def record_failure(ctx: RunContext, order_id: Any, exc: Exception) -> OrderOutcome:
    """Count the order's failure (quarantining it at ``max_attempts``) and audit it."""
    reason = describe_error(exc)
    log.warning("order %s: failed: %s", order_id, reason)
    if ctx.dry_run:
        return OrderOutcome(order_id, verdicts.FAILED, reason)
    try:
        with ctx.engine.begin() as conn:
            verdict = Verdict(verdicts.FAILED, reason)
            attempt, quarantined = note_attempt(ctx, conn, order_id, verdict, failed=True)
            if quarantined:
                last = f"quarantined after {ctx.max_attempts} failed attempt(s); last: {reason}"
                verdict = Verdict(verdicts.QUARANTINED, last)
            (outcome,) = write_audit(ctx, conn, [Decision(order_id, verdict, attempt=attempt)])
            return outcome
    except Exception as second:  # the database itself is failing
        log.error("order %s: could not record the failure: %s", order_id, describe_error(second))
        # Gone, not just failing: every later order would fail the same way, so the run
        # stops here with DatabaseUnavailableError and the rest waits for the next run.
        check_reachable(ctx.engine)
        return OrderOutcome(order_id, verdicts.FAILED, reason)


def left_for_next_run(ctx: RunContext, order_id: Any, exc: Exception) -> OrderOutcome:
    """Audit an order the provider could not answer for, without counting it as the order's failure."""
    reason = f"{PROVIDER_UNAVAILABLE} ({describe_error(exc)})"
    log.warning("order %s: %s", order_id, reason)
    with ctx.engine.begin() as conn:
        (outcome,) = write_audit(ctx, conn, [Decision(order_id, Verdict(verdicts.SKIPPED, reason))])
        return outcome


def release(ctx: RunContext, order_id: Any) -> None:
    """Lift an order's quarantine and reset its failure count; audited as released."""
    at = ctx.tables.attempts
    with ctx.engine.begin() as conn:
        released = conn.execute(
            at.update()
            .where(at.c.order_id == str(order_id), at.c.quarantined_at.is_not(None))
            .values(
                quarantined_at=None,
                hold_kind=None,
                failures=0,
                updated_at=ctx.clock(),
                last_outcome=verdicts.RELEASED,
            )
        ).rowcount
        if not released:
            raise ConfigurationError(f"order {order_id} is not quarantined")
        verdict = Verdict(verdicts.RELEASED, "released from quarantine by an operator")
        write_audit(ctx, conn, [Decision(order_id, verdict)])


def hold_for_provider(ctx: RunContext, order_id: Any, verdict: Verdict) -> OrderOutcome:
    """Hold the order on the provider's word (``verdict`` is a ``provider_failed`` hold), audited.

    For a provider that refused the request about this one transaction while it answered
    others: not the token's fault, so the run goes on, and a human looks at this order.
    """
    log.warning("order %s: %s", order_id, verdict.reason)
    if ctx.dry_run:
        return Decision(order_id, verdict).outcome()
    with ctx.engine.begin() as conn:
        attempt, _ = note_attempt(ctx, conn, order_id, verdict, failed=False, hold=True)
        (outcome,) = write_audit(ctx, conn, [Decision(order_id, verdict, attempt=attempt)])
        return outcome
