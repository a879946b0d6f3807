"""Attempts and quarantine: how often each order failed, and which orders runs leave alone.

One row per order in ``<prefix>order_attempts``. A failure is counted in a
transaction of its own (the order's own transaction rolled back); after
``max_attempts`` failures the order is quarantined: reported, never retried
until an operator releases it. A payment the provider calls failed or refunded
holds the order the same way, without counting a failure.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from regularization_pipeline.core import verdicts
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


def note_attempt(
    ctx: RunContext,
    conn: sa.Connection,
    order_id: Any,
    verdict: Verdict,
    *,
    failed: bool,
    hold: bool = False,
) -> tuple[int, bool]:
    """Count an attempt on the order; returns (total attempts, quarantined now).

    ``hold`` quarantines the order whatever its failures: runs skip it until ``release``.
    """
    at, now, key = ctx.tables.attempts, ctx.clock(), str(order_id)
    # Create the row if absent, then lock it: "select, insert when missing" let two
    # overlapping workers both insert (one failure lost to a unique violation) and, on
    # InnoDB, deadlock on the gap lock of the missing row.
    _ensure_row(conn, at, key, verdict.action, now)
    query = sa.select(at.c.failures, at.c.total_attempts).where(at.c.order_id == key)
    if ctx.statements.skip_locked:
        query = query.with_for_update()
    current = conn.execute(query).one()
    failures = current.failures + (1 if failed else 0)
    quarantine = failed and failures >= ctx.max_attempts
    values = dict(
        failures=failures,
        total_attempts=current.total_attempts + 1,
        last_outcome=verdict.action,
        last_reason=verdict.reason[:500],
        hold_kind=verdict.kind if hold else None,
        last_run_id=ctx.run_id,
        updated_at=now,
    )
    if quarantine or hold:
        values["quarantined_at"] = now
    conn.execute(at.update().where(at.c.order_id == key).values(**values))
    return current.total_attempts + 1, quarantine


def _ensure_row(conn: sa.Connection, at: sa.Table, key: str, outcome: str, now) -> None:
    values = dict(order_id=key, failures=0, total_attempts=0, last_outcome=outcome, updated_at=now)
    dialect = conn.dialect.name
    if dialect == "postgresql":
        stmt = (
            postgresql.insert(at)
            .values(values)
            .on_conflict_do_nothing(index_elements=[at.c.order_id])
        )
    elif dialect in ("mysql", "mariadb"):
        # A no-op update rather than INSERT IGNORE: it takes the row's exclusive lock at
        # once, where IGNORE's shared lock would deadlock with the FOR UPDATE that follows.
        stmt = mysql.insert(at).values(values).on_duplicate_key_update(order_id=at.c.order_id)
    else:  # SQLite: the transaction already holds the database's write lock
        stmt = (
            sqlite.insert(at).values(values).on_conflict_do_nothing(index_elements=[at.c.order_id])
        )
    conn.execute(stmt)


def reset_after_regularization(ctx: RunContext, conn: sa.Connection, order_ids: list) -> None:
    """A regularized order's failures are forgotten; its row, if it has one, says so."""
    params = {"p_keys": [str(i) for i in order_ids], "p_run": ctx.run_id, "p_now": ctx.clock()}
    conn.execute(regularized_reset(ctx.tables.attempts), params)


@lru_cache(maxsize=64)
def regularized_reset(at: sa.Table) -> sa.Update:
    """The reset of :func:`reset_after_regularization`, for the orders keyed ``p_keys``
    (their ids as text), by run ``p_run`` at ``p_now``."""
    return (
        at.update()
        .where(at.c.order_id.in_(sa.bindparam("p_keys", expanding=True)))
        .values(
            failures=0,
            total_attempts=at.c.total_attempts + 1,
            last_outcome=verdicts.REGULARIZED,
            last_reason="completed transaction verified",
            hold_kind=None,
            last_run_id=sa.bindparam("p_run", type_=sa.String),
            updated_at=sa.bindparam("p_now", type_=at.c.updated_at.type),
        )
    )


def without_quarantined(ctx: RunContext, page: list) -> list:
    """``page`` less the orders a run must leave alone."""
    at = ctx.tables.attempts
    with ctx.engine.connect() as conn:
        held = set(
            conn.execute(
                sa.select(at.c.order_id).where(
                    at.c.order_id.in_([str(i) for i in page]), at.c.quarantined_at.is_not(None)
                )
            ).scalars()
        )
    return [i for i in page if str(i) not in held]


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
