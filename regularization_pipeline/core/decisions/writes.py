"""The one write step of a decision: flip, OrderCompleted outbox row, attempts, audit.

Both paths use it, a single order (:meth:`Regularizer.regularize_one`) and a
batch (:mod:`regularization_pipeline.core.decisions.batching`), inside the transaction
that holds the orders' row locks. Writing the flip and its event in one place
is what makes "exactly one event per flip" hold in every mode: the flip is a
compare-and-set on the pending statuses, and the outbox rows are written only
for the orders it moved, before the transaction commits.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import sqlalchemy as sa

from regularization_pipeline.core import verdicts
from regularization_pipeline.core.decisions.attempt_rows import (
    note_attempt,
    regularized_reset,
    reset_after_regularization,
)
from regularization_pipeline.core.decisions.audit import (
    Decision,
    audit_insert,
    audit_values,
    dry_run_of,
    write_audit,
)
from regularization_pipeline.core.decisions.context import OrderOutcome, OrderStatements, RunContext
from regularization_pipeline.core.decisions.verification import Verdict
from regularization_pipeline.core.delivery.events import (
    event_values,
    new_event,
    occurred_at,
    outbox_fields,
    outbox_insert,
    outbox_times,
)
from regularization_pipeline.core.delivery.laravel_queue import write_in_transaction
from regularization_pipeline.core.shop.driver_sql import DriverSql
from regularization_pipeline.core.shop.engine import insert_row, rows_as_json
from regularization_pipeline.core.shop.tables import OwnedTables

LATE_WEBHOOK = "order changed before the flip (late webhook)"


class FlipRaceError(RuntimeError):
    """Some orders of a batch changed between the claim and the flip (only without row locks)."""


def write_decisions(
    ctx: RunContext, conn: sa.Connection, decisions: list[Decision]
) -> list[OrderOutcome]:
    """Carry out the decisions in the caller's transaction; returns the outcomes the run counts.

    A dry run writes only the audit. A batch whose flip moved fewer orders than it
    should raises :class:`FlipRaceError` (the caller rolls back and decides them one
    by one); a single order is then skipped as taken by its late webhook.
    """
    if ctx.dry_run:
        decisions = [dry_run_of(decision) for decision in decisions]
    flip = [x for x in decisions if x.verdict.action == verdicts.REGULARIZED]
    # PostgreSQL flips and writes the outbox rows, the attempts reset and the audit rows in
    # one statement; elsewhere the flip comes first, then each write.
    audited = bool(flip) and conn.dialect.name == "postgresql"
    flipped = _flip_and_write(ctx, conn, flip, decisions) if audited else _flip(ctx, conn, flip)
    if flip and not flipped:
        if len(decisions) > 1:
            raise FlipRaceError(f"an order of the batch of {len(flip)} changed before the flip")
        decisions = [
            Decision(flip[0].order_id, Verdict(verdicts.SKIPPED, LATE_WEBHOOK), flip[0].order)
        ]
        flip, audited = [], False
    if flip and not audited:
        _write_events(ctx, conn, flip)
    if not ctx.dry_run:
        for decision in decisions:
            if decision.verdict.action == verdicts.INCONSISTENT:
                # The provider says the payment failed or was refunded: a human decides, so
                # the order is held instead of asked about (and audited) every five minutes.
                held = decision.verdict.kind == verdicts.PROVIDER_FAILED
                note_attempt(
                    ctx, conn, decision.order_id, decision.verdict, failed=False, hold=held
                )
    if audited:
        outcomes = [decision.outcome() for decision in decisions]
    else:
        outcomes = write_audit(ctx, conn, decisions)
    ctx.fault_each("before_commit", [decision.order_id for decision in decisions])
    return outcomes


def _flip(ctx: RunContext, conn: sa.Connection, flip: list[Decision]) -> bool:
    """The compare-and-set; True when it moved every order it was given."""
    if not flip:
        return False
    ids = [decision.order_id for decision in flip]
    params = ctx.statements.flip_params(ids, ctx.clock())
    if len(ids) == 1:
        moved = ctx.statements.one_flip.execute(conn, params).rowcount
    else:
        moved = conn.execute(ctx.statements.flip, params).rowcount
    if moved != len(ids):
        return False
    ctx.fault_each("after_flip", ids)
    return True


def _write_events(ctx: RunContext, conn: sa.Connection, flipped: list[Decision]) -> None:
    """One OrderCompleted outbox row per flipped order (and its in-transaction jobs), attempts reset.

    A batch's outbox rows are rendered by the database from the events' fields
    (:func:`~regularization_pipeline.core.delivery.events.outbox_insert`); one order's row in
    Python.
    """
    now = ctx.clock()
    events = [_event(ctx, x, now) for x in flipped]
    ids = [decision.order_id for decision in flipped]
    if len(events) > 1:
        conn.execute(
            outbox_insert(ctx.tables.outbox, conn.dialect), _event_params(ctx, events, now)
        )
    else:
        insert_row(conn, ctx.tables.outbox, outbox_fields(events[0]), outbox_times(now))
    # Publishers writing into the shop's own database (Laravel's jobs table) commit with the flip.
    write_in_transaction(conn, ctx.tables, ctx.transactional, events, now)
    ctx.fault_each("after_outbox", ids)
    with_rows = [decision.order_id for decision in flipped if decision.attempts_row]
    if with_rows:
        reset_after_regularization(ctx, conn, with_rows)


def _flip_and_write(
    ctx: RunContext, conn: sa.Connection, flip: list[Decision], decisions: list[Decision]
) -> bool:
    """PostgreSQL: the compare-and-set, its outbox rows, the attempts reset and the audit rows
    of ``decisions`` in one statement (:func:`_flipped_and_written`): one round trip instead
    of two. True when the flip moved every order it was given; nothing else was written then.
    """
    now = ctx.clock()
    events = [_event(ctx, x, now) for x in flip]
    ids = [decision.order_id for decision in flip]
    params = {
        **_event_params(ctx, events, now),
        **ctx.statements.flip_params(ids, now),
        "p_flips": len(ids),
        "p_keys": [str(i) for i in ids],
        "p_rows": rows_as_json([audit_values(decision) for decision in decisions]),
    }
    if len(ids) == 1:  # one order's: compiled once (core/shop/driver_sql.py)
        result = _one_flipped_and_written(ctx.statements, ctx.tables, conn.dialect).execute(
            conn, params
        )
    else:
        result = conn.execute(
            _flipped_and_written(ctx.statements, ctx.tables, conn.dialect), params
        )
    if result.rowcount == 0:  # every row is written, or none
        return False
    ctx.fault_each("after_flip", ids)
    write_in_transaction(conn, ctx.tables, ctx.transactional, events, now)
    ctx.fault_each("after_outbox", ids)
    return True


def _event_params(ctx: RunContext, events: list, now) -> dict[str, Any]:
    return {
        "p_events": rows_as_json([event_values(event) for event in events]),
        "p_run": ctx.run_id,
        "p_occurred_at": occurred_at(now),
        "p_now": now,
    }


@lru_cache(maxsize=64)
def _one_flipped_and_written(
    statements: OrderStatements, tables: OwnedTables, dialect: sa.engine.Dialect
) -> DriverSql:
    statement = _flipped_and_written(statements, tables, dialect)
    return DriverSql(statement, dialect, lists=("p_orders", "p_keys"))


@lru_cache(maxsize=64)
def _flipped_and_written(
    statements: OrderStatements, tables: OwnedTables, dialect: sa.engine.Dialect
) -> sa.Insert:
    """The flip, the outbox rows, the attempts reset and the audit rows as one PostgreSQL
    statement (data-modifying ``WITH``). Every write but the flip is made on the flip having
    moved all ``p_flips`` orders, so a flip that moved fewer leaves no event nor audit row
    (the statement's row count, its audit rows, is then 0)."""
    flipped = statements.flip.returning(statements.schema.o("id")).cte("flipped")
    moved_all = sa.select(sa.func.count()).select_from(flipped).scalar_subquery() == sa.bindparam(
        "p_flips"
    )
    events = outbox_insert(tables.outbox, dialect, where=moved_all).cte("written_events")
    reset = regularized_reset(tables.attempts, where=moved_all).cte("reset_attempts")
    return audit_insert(tables.audit, dialect, where=moved_all).add_cte(flipped, events, reset)


def _event(ctx: RunContext, decision: Decision, now) -> Any:
    tx, order = decision.verdict.transaction, decision.order
    currency = tx.currency or (order.currency if order else None)
    if currency is not None and not isinstance(currency, str):
        currency = str(currency)  # a currency id (integer) travels as text, as codes do
    return new_event(decision.order_id, tx.id, tx.amount, currency, ctx.run_id, now)
