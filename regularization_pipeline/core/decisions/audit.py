"""The audit trail: one row per decision on an order, and the outcome the run counts.

The audit row is written in the same transaction as what it describes (the
flip and the event, a failure count, a release), so the trail never claims
what did not commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import sqlalchemy as sa

from regularization_pipeline.core import verdicts
from regularization_pipeline.core.decisions.stamp import RunStamp
from regularization_pipeline.core.decisions.verification import Verdict
from regularization_pipeline.core.shop.engine import insert_row, json_rowset, rows_as_json
from regularization_pipeline.core.shop.rows import OrderRow, to_decimal
from regularization_pipeline.core.verdicts import OrderOutcome


@dataclass(frozen=True)
class Decision:
    """A verdict on one order, with the order as read under its lock (None when it was not read)."""

    order_id: Any
    verdict: Verdict
    order: OrderRow | None = None
    attempt: int = 0
    # False when the order is known to have no attempts row: a regularization resets none.
    attempts_row: bool = True

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


def write_audit(
    ctx: RunStamp, conn: sa.Connection, decisions: list[Decision]
) -> list[OrderOutcome]:
    """Audit each decision in the caller's transaction; returns their outcomes.

    One decision is one row rendered in Python; a batch's rows are rendered by the database
    from the decisions' values (:func:`audit_insert`), the same row for the same decision.
    """
    if len(decisions) > 1:
        values = [audit_values(decision) for decision in decisions]
        params = {"p_rows": rows_as_json(values), "p_run": ctx.run_id, "p_now": ctx.clock()}
        conn.execute(audit_insert(ctx.tables.audit, conn.dialect), params)
    elif decisions:
        insert_row(
            conn, ctx.tables.audit, audit_row(ctx, decisions[0]), {"created_at": ctx.clock()}
        )
    return [decision.outcome() for decision in decisions]


# An audit row's columns that come from its decision, in the order audit_values gives them;
# the others are the run's (run_id) and the time of writing (created_at).
DECISION_COLUMNS = (
    "order_id",
    "transaction_id",
    "action",
    "reason",
    "kind",
    "attempt",
    "order_status",
    "order_amount",
    "transaction_amount",
    "currency",
    "transaction_completed_at",
)


def audit_values(decision: Decision) -> tuple:
    """The values of the decision's audit row, as :data:`DECISION_COLUMNS` names them."""
    order, tx = decision.order, decision.verdict.transaction
    if tx is not None and tx.currency:
        currency = tx.currency
    else:
        currency = order.currency if order else None
    return (
        str(decision.order_id),
        None if tx is None else str(tx.id),
        decision.verdict.action,
        decision.verdict.reason,
        decision.verdict.kind,
        decision.attempt,
        None if order is None else order.status,
        _money(order.total) if order else None,
        _money(tx.amount) if tx else None,
        currency,
        tx.completed_at if tx else None,
    )


def audit_row(ctx: RunStamp, decision: Decision) -> dict[str, Any]:
    """The audit insert for one decision but its time; every value fits its column."""
    values = dict(zip(DECISION_COLUMNS, audit_values(decision), strict=True))
    return fit_to_columns(ctx.tables.audit, {"run_id": ctx.run_id, **values})


@lru_cache(maxsize=64)
def audit_insert(
    table: sa.Table, dialect: sa.engine.Dialect, where: sa.ColumnElement[bool] | None = None
) -> sa.Insert:
    """A batch's audit rows, rendered by the database as :func:`audit_row` renders one.

    Parameters: ``p_rows`` (:func:`rows_as_json` of :func:`audit_values` of each decision),
    ``p_run`` and ``p_now``. Strings are cut to their column's length in the statement, as
    :func:`fit_to_columns` cuts them. ``where``: a condition the rows are written on.
    """
    v = json_rowset(dialect, [(name, table.c[name].type) for name in DECISION_COLUMNS], "p_rows")
    lengths = _string_lengths(table)

    def fit(name: str, value: sa.ColumnElement) -> sa.ColumnElement:
        length = lengths.get(name)
        return value if length is None else sa.func.substr(value, 1, length, type_=sa.String)

    row = {"run_id": fit("run_id", sa.bindparam("p_run", type_=sa.String))}
    row.update({name: fit(name, v.c[name]) for name in DECISION_COLUMNS})
    row["created_at"] = sa.bindparam("p_now", type_=table.c.created_at.type)
    select = sa.select(*row.values()).select_from(v)
    return table.insert().from_select(list(row), select if where is None else select.where(where))


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
