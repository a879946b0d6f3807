"""The audit trail: one row per decision on an order, and the outcome the run counts.

The audit row is written in the same transaction as what it describes (the
flip and the event, a failure count, a release), so the trail never claims
what did not commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import sqlalchemy as sa

from regularization_pipeline.core import verdicts
from regularization_pipeline.core.decisions.context import OrderOutcome, RunContext
from regularization_pipeline.core.decisions.orders import OrderStatements
from regularization_pipeline.core.decisions.verification import Verdict
from regularization_pipeline.core.shop.engine import insert_many
from regularization_pipeline.core.shop.rows import OrderRow, TransactionRow, to_decimal


@dataclass(frozen=True)
class Decision:
    """A verdict on one order, with the order as read under its lock (None when it was not read)."""

    order_id: Any
    verdict: Verdict
    order: OrderRow | None = None
    attempt: int = 0

    def outcome(self) -> OrderOutcome:
        tx = self.verdict.transaction
        return OrderOutcome(
            self.order_id,
            self.verdict.action,
            self.verdict.reason,
            None if tx is None else tx.id,
            self.attempt,
            self.verdict.kind,
            self.verdict.hold_reason,
        )


def completed_payments(statements: OrderStatements, payments: Sequence[TransactionRow]) -> list:
    completed = statements.schema.statuses.transaction_completed
    return [p for p in payments if p.status in completed]


# Orders per query when figures are read for many: bounded IN lists.
FIGURES_CHUNK = 500


def orders_and_payments(
    conn: sa.Connection, statements: OrderStatements, order_ids: Sequence
) -> tuple[dict[str, OrderRow], dict[str, list[TransactionRow]]]:
    """The orders (by id as text) and their completed payments: what an inconsistency's audit
    row and ``list-inconsistencies`` show. Two queries per FIGURES_CHUNK ids."""
    s = statements.schema
    orders: dict[str, OrderRow] = {}
    payments: dict[str, list[TransactionRow]] = {}
    ids = list(dict.fromkeys(order_ids))
    for start in range(0, len(ids), FIGURES_CHUNK):
        chunk = ids[start : start + FIGURES_CHUNK]
        query = sa.select(*statements.order_columns).where(s.o("id").in_(chunk))
        for row in conn.execute(query):
            order = statements.order_row(row)
            orders[str(order.id)] = order
        for key, found in statements.payments_of(conn, chunk).items():
            payments[str(key)] = completed_payments(statements, found)
    return orders, payments


def write_audit(
    ctx: RunContext, conn: sa.Connection, decisions: list[Decision]
) -> list[OrderOutcome]:
    """Audit each decision in the caller's transaction; returns their outcomes."""
    rows = [audit_row(ctx, decision) for decision in decisions]
    insert_many(conn, ctx.tables.audit, rows, shared={"created_at": ctx.clock()})
    return [decision.outcome() for decision in decisions]


def audit_row(ctx: RunContext, decision: Decision) -> dict[str, Any]:
    """The audit insert for one decision but its time; every value fits its column."""
    order, tx = decision.order, decision.verdict.transaction
    if tx is not None and tx.currency:
        currency = tx.currency
    else:
        currency = order.currency if order else None
    return fit_to_columns(
        ctx.tables.audit,
        dict(
            run_id=ctx.run_id,
            order_id=str(decision.order_id),
            transaction_id=None if tx is None else str(tx.id),
            action=decision.verdict.action,
            reason=decision.verdict.reason,
            kind=decision.verdict.kind,
            attempt=decision.attempt,
            order_status=None if order is None else order.status,
            order_amount=_money(order.total) if order else None,
            transaction_amount=_money(tx.amount) if tx else None,
            currency=currency,
            transaction_completed_at=tx.completed_at if tx else None,
        ),
    )


def fit_to_columns(table: sa.Table, values: dict[str, Any]) -> dict[str, Any]:
    """Cut strings to their column's length: the application's values (a status, a currency)
    are not ours to bound, and the audit of an odd order must not fail for its length."""
    fitted = dict(values)
    for name, length in _string_lengths(table).items():
        value = values.get(name)
        if isinstance(value, str) and len(value) > length:
            fitted[name] = value[:length]
    return fitted


@lru_cache(maxsize=64)
def _string_lengths(table: sa.Table) -> dict[str, int]:
    # Read once per table: a batch fits thousands of rows.
    return {c.name: c.type.length for c in table.c if getattr(c.type, "length", None)}


def _money(value: Any):
    amount = to_decimal(value)
    # Keep the audit insert valid whatever the application stored.
    return amount if amount is not None and abs(amount) < 10**14 else None


def dry_run_of(decision: Decision) -> Decision:
    """What a dry run records instead of a regularization: the same verdict, marked dry-run."""
    verdict = decision.verdict
    if verdict.action != verdicts.REGULARIZED:
        return decision
    dry = Verdict(verdicts.DRY_RUN, "would regularize: " + verdict.reason, verdict.transaction)
    return Decision(decision.order_id, dry, decision.order, decision.attempt)
