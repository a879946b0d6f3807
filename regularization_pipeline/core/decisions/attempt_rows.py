"""The ``<prefix>order_attempts`` rows: an attempt counted (quarantining at ``max_attempts``
failures, or holding on the provider's word), the failures forgotten after a regularization,
and the quarantined orders a run leaves out.

Below the audit trail: the one write step counts here in the flip's transaction, and
``attempts`` builds the audited outcomes (a failure, a release, a provider's hold) on it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from regularization_pipeline.core import verdicts
from regularization_pipeline.core.decisions.stamp import RunStamp
from regularization_pipeline.core.decisions.verification import Verdict


def note_attempt(
    ctx: RunStamp,
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
    if ctx.skip_locked:
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


def reset_after_regularization(ctx: RunStamp, conn: sa.Connection, order_ids: list) -> None:
    """A regularized order's failures are forgotten; its row, if it has one, says so."""
    params = {"p_keys": [str(i) for i in order_ids], "p_run": ctx.run_id, "p_now": ctx.clock()}
    conn.execute(regularized_reset(ctx.tables.attempts), params)


@lru_cache(maxsize=64)
def regularized_reset(at: sa.Table, where: sa.ColumnElement[bool] | None = None) -> sa.Update:
    """The reset of :func:`reset_after_regularization`, for the orders keyed ``p_keys``
    (their ids as text), by run ``p_run`` at ``p_now`` (``where``: a condition it is made on)."""
    keyed = at.c.order_id.in_(sa.bindparam("p_keys", expanding=True))
    return (
        at.update()
        .where(keyed if where is None else sa.and_(keyed, where))
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


def without_quarantined(ctx: RunStamp, page: list) -> list:
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
