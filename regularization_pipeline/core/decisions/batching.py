"""Batched mode: claim, verify and flip ``batch_size`` orders in one transaction.

The claim locks the run's next orders, oldest payment first, that are still
regularizable and unquarantined, with ``FOR UPDATE SKIP LOCKED`` (rows another run
holds are skipped, not waited for), reads their
payments in one statement, decides each order with the same pure rule as the
per-order path, and hands the decisions to the one write step
(:func:`regularization_pipeline.core.decisions.writes.write_decisions`).
"""

from __future__ import annotations

import sqlalchemy as sa

from regularization_pipeline.core.decisions.audit import Decision
from regularization_pipeline.core.decisions.context import OrderOutcome, RunContext
from regularization_pipeline.core.decisions.verification import verify
from regularization_pipeline.core.decisions.writes import write_decisions
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.shop.rows import OrderRow


def decide_batch(ctx: RunContext, conn: sa.Connection, ids: list) -> list[OrderOutcome]:
    """Claim, verify, flip, event and audit the orders ``ids`` in the caller's transaction."""
    claimed = claim_batch(ctx, conn, ids)
    if not claimed:
        return []
    ids = [order.id for order in claimed]
    ctx.fault_each("after_lock", ids)
    payments = ctx.statements.payments_of(conn, ids)
    statuses = ctx.schema.statuses
    decisions = [
        Decision(order.id, verify(order, payments.get(order.id, []), statuses, ctx.window), order)
        for order in claimed
    ]
    return write_decisions(ctx, conn, decisions)


def claim_batch(ctx: RunContext, conn: sa.Connection, ids: list) -> list[OrderRow]:
    """Lock those of ``ids`` that are still orders the job would fix, in the order of ``ids``.

    ``ids`` come from the run's queue (:func:`~regularization_pipeline.core.detection.orphans.fixable_pages`,
    oldest payment first); the claim re-checks every condition under the lock, by primary
    key, so an order a late webhook completed, a guard now stops, or another run holds
    (skipped, not waited for) is left out. The rows are as read under their locks (a
    locking read sees the latest committed row).
    """
    s = ctx.schema
    query = sa.select(*ctx.statements.order_columns).where(
        s.o("id").in_(ids), d.fixable_condition(s, ctx.window, ctx.tables.attempts)
    )
    if ctx.statements.skip_locked:
        query = query.with_for_update(skip_locked=True)
    claimed = [ctx.statements.order_row(row) for row in conn.execute(query)]
    position = {str(order_id): n for n, order_id in enumerate(ids)}
    return sorted(claimed, key=lambda order: position.get(str(order.id), len(ids)))
