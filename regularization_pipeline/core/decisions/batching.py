"""Batched mode: claim, verify and flip ``batch_size`` orders in one transaction.

The claim locks the next regularizable, unquarantined orders with ``FOR UPDATE
SKIP LOCKED`` (rows another run holds are skipped, not waited for), reads their
payments in one statement, decides each order with the same pure rule as the
per-order path, and hands the decisions to the one write step
(:func:`regularization_pipeline.core.decisions.writes.write_decisions`).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from regularization_pipeline.core.decisions.audit import Decision
from regularization_pipeline.core.decisions.context import OrderOutcome, RunContext
from regularization_pipeline.core.decisions.verification import verify
from regularization_pipeline.core.decisions.writes import write_decisions
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.shop.rows import OrderRow

# How many pending orders a batch claim looks through per order it may take: orphans are
# a minority of pending orders (most wait for their customer), so a slice of a few times
# the batch usually fills it, and a slice without any just moves the scan on.
CLAIM_SCAN_FACTOR = 4
MAX_CLAIM_SLICE = 100_000


def next_slice_size(size: int, slice_size: int, taken: int) -> int:
    """The next claim's slice: back to a few times the batch after a full one, else doubled.

    Pending orders waiting for their customer can outnumber the orphans many times
    over: a slice that did not fill the batch doubles the next one, so crossing
    them takes a few claims instead of one per slice.
    """
    return size * CLAIM_SCAN_FACTOR if taken == size else min(slice_size * 2, MAX_CLAIM_SLICE)


def decide_batch(
    ctx: RunContext, conn: sa.Connection, after: Any, size: int, slice_size: int
) -> tuple[list[OrderOutcome], Any]:
    """Claim, verify, flip, event and audit a batch in the caller's transaction.

    Returns the outcomes and how far the scan went (None once no pending order is left).
    """
    claimed, scanned_to = claim_batch(ctx, conn, after, size, slice_size)
    if not claimed:
        return [], scanned_to
    ids = [order.id for order in claimed]
    ctx.fault_each("after_lock", ids)
    payments = ctx.statements.payments_of(conn, ids)
    statuses = ctx.schema.statuses
    decisions = [
        Decision(order.id, verify(order, payments.get(order.id, []), statuses, ctx.window), order)
        for order in claimed
    ]
    return write_decisions(ctx, conn, decisions), scanned_to


def claim_batch(
    ctx: RunContext, conn: sa.Connection, after: Any, size: int, slice_size: int
) -> tuple[list[OrderRow], Any]:
    """Lock the next regularizable, unquarantined orders after ``after``.

    Returns the locked orders as read under their locks (a locking read sees the
    latest committed row) and how far the scan went (None once no pending order is
    left): the candidates are looked for within the next ``slice_size`` pending
    orders, so a slice with none, or all held by another run, moves the scan on.
    """
    s = ctx.schema
    pending = d.pending_ids_after(s, after, slice_size).subquery()
    # The last id of the slice by ORDER BY, not max(): PostgreSQL has no max() of a uuid key.
    last = sa.select(pending.c[0]).order_by(pending.c[0].desc()).limit(1)
    slice_end = conn.execute(last).scalar()
    if slice_end is None:
        return [], None
    in_slice = [s.o("id") <= slice_end]
    if after is not None:
        in_slice.append(s.o("id") > after)
    query = (
        sa.select(*ctx.statements.order_columns)
        .where(*in_slice, d.fixable_condition(s, ctx.window, ctx.tables.attempts))
        .order_by(s.o("id"))
        .limit(size)
    )
    if ctx.statements.skip_locked:
        query = query.with_for_update(skip_locked=True)
    claimed = [ctx.statements.order_row(row) for row in conn.execute(query)]
    # A full batch may have left candidates in the slice: go on from the last one taken.
    return claimed, (claimed[-1].id if len(claimed) == size else slice_end)
