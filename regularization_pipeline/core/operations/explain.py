"""What a run would do with one order and why, and the figures a human settles an
inconsistency with. Read-only: nothing here writes, locks or asks the provider.

A run takes an order when the scan's SQL finds it fixable (pending, live, one completed
payment in the window paying its total in its currency, not quarantined), then decides it
with :func:`verify` on the rows it read. :func:`explain` asks both, so its answer is the
run's; ``regularize-order`` acts only when it says "regularize".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from regularization_pipeline.core import verdicts
from regularization_pipeline.core.decisions.context import OrderStatements, completed_payments
from regularization_pipeline.core.decisions.verification import Verdict, verify
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.provider import money
from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.core.shop.rows import OrderRow, TransactionRow, to_decimal

FIGURE_COLUMNS = (
    "order_status",
    "order_total",
    "order_currency",
    "transaction_id",
    "amount",
    "currency",
    "completed_at_utc",
)


def utc_text(when: dt.datetime | None) -> str:
    """A naive UTC time as the operator reads it, saying it is UTC."""
    return f"{when.isoformat(sep=' ', timespec='seconds')} UTC" if when else ""


def _money(value: Any, currency: Any = None) -> str:
    """An amount as the shop's people write it: the currency's decimals (90.00 EUR, 1000 JPY)
    when that loses nothing, else every digit stored; an unreadable value as it is."""
    amount = to_decimal(value)
    if amount is None:
        return "" if value is None else str(value)
    code = currency if isinstance(currency, str) and currency.strip() else "EUR"
    step = Decimal(1).scaleb(-money.exponent(code))
    shown = amount.quantize(step) if amount == amount.quantize(step) else amount.normalize()
    return f"{shown:f}"


def figure_rows(order: OrderRow | None, completed: Sequence[TransactionRow]) -> list[tuple]:
    """FIGURE_COLUMNS: one row per completed payment (one row without payment when none)."""
    head = (
        ("", "", "")
        if order is None
        else (str(order.status), _money(order.total, order.currency), order.currency or "")
    )
    if not completed:
        return [(*head, "", "", "", "")]
    return [
        (*head, p.id, _money(p.amount, p.currency), p.currency or "", utc_text(p.completed_at))
        for p in completed
    ]


@dataclass(frozen=True)
class Explanation:
    """One order as a run would see it: its figures, and the decision with its reason."""

    order: OrderRow
    payments: list[TransactionRow]  # the completed ones
    quarantine: str | None  # the last failure when quarantined
    fixable: bool  # the scan's SQL would take it
    verdict: Verdict  # what the decision makes of its rows

    @property
    def would_regularize(self) -> bool:
        return (
            self.quarantine is None and self.fixable and self.verdict.action == verdicts.REGULARIZED
        )

    def decision(self, asks_provider: bool = False) -> str:
        """What a run would do, in one line."""
        key, reason = self.order.id, self.verdict.reason
        if self.quarantine is not None:
            return (
                f"a run skips it: quarantined (last: {self.quarantine}); "
                f"`regularize-completed-orders release --order-id {key}` lets the next run retry it"
            )
        if self.verdict.action == verdicts.INCONSISTENT:
            return f"a run holds it for a human and changes nothing: {reason}"
        if self.verdict.action != verdicts.REGULARIZED:
            return f"a run leaves it: {reason}"
        if not self.fixable:
            return "a run leaves it: the scan does not take it as an orphan to fix"
        asked = " once the payment provider confirms the payment" if asks_provider else ""
        return (
            f"a run would regularize it{asked}: {reason}; status {self.order.status!r} -> "
            "completed, one OrderCompleted event, one audit row"
        )

    def lines(self, asks_provider: bool = False) -> list[str]:
        o = self.order
        total = f"{_money(o.total, o.currency)} {o.currency or ''}".rstrip()
        lines = [f"order {o.id}: status {o.status!r}, total {total}"]
        if o.guard_failures:
            lines.append(f"  held by the mapping's guards: {'; '.join(o.guard_failures)}")
        if not self.payments:
            lines.append("  no completed transaction")
        for p in self.payments:
            paid = f"{_money(p.amount, p.currency)} {p.currency or ''}".rstrip()
            when = utc_text(p.completed_at) or "no completion time"
            lines.append(f"  transaction {p.id}: completed, {paid}, at {when}")
        return [*lines, self.decision(asks_provider)]


def explain(
    conn: sa.Connection,
    statements: OrderStatements,
    key: Any,
    window: d.ScanWindow,
) -> Explanation | None:
    """What a run with ``window`` would do with the existing order ``key``; None when it is gone."""
    s = statements.schema
    order = statements.load_order(conn, key, lock=False)
    if order is None:
        return None
    payments = statements.payments(conn, key)
    attempts = tb.owned_tables(s.mapping.table_prefix).attempts
    migrated = sa.inspect(conn).has_table(attempts.name)
    quarantine = None
    if migrated:
        held = conn.execute(
            sa.select(attempts.c.last_reason).where(
                attempts.c.order_id == str(key), attempts.c.quarantined_at.is_not(None)
            )
        ).first()
        quarantine = None if held is None else str(held.last_reason or "repeated failures")
    fixable = conn.execute(
        sa.select(sa.literal(1)).where(
            s.o("id") == key, d.fixable_condition(s, window, attempts if migrated else None)
        )
    ).first()
    return Explanation(
        order,
        completed_payments(statements, payments),
        quarantine,
        fixable is not None,
        verify(order, payments, s.statuses, window),
    )
