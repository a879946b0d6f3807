"""The decision for one order, from the rows read under its lock. Pure: no I/O.

Kept apart from the SQL so every rule can be read in one place and tested
with plain values: the order must still be pending, live and let through by the
mapping's guards, with exactly one
completed transaction that completed inside the scan window and whose amount
and currency match the order's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.provider import money
from regularization_pipeline.core.provider.answers import HoldReason, ProviderAnswer, ProviderStatus
from regularization_pipeline.core.shop.mapping import StatusMapping
from regularization_pipeline.core.shop.rows import OrderRow, TransactionRow, to_decimal
from regularization_pipeline.core.verdicts import INCONSISTENT, REGULARIZED, SKIPPED


@dataclass(frozen=True)
class Verdict:
    action: str  # REGULARIZED, SKIPPED or INCONSISTENT
    reason: str  # for people: the audit trail's words
    transaction: TransactionRow | None = None
    kind: str | None = None  # the inconsistency kind of an INCONSISTENT verdict (audit.kind)
    hold_reason: str | None = None  # why the provider's answer holds the order (HoldReason)


def inconsistent(kind: str, words: str, transaction: TransactionRow | None = None) -> Verdict:
    """An INCONSISTENT verdict: ``kind`` as the field readers key on, and in front of the words."""
    return Verdict(INCONSISTENT, f"{kind}: {words}", transaction, kind=kind)


def provider_hold(verdict: Verdict, reason: str, words: str) -> Verdict:
    """The order held as ``provider_failed``, with ``reason`` as its machine-readable field."""
    held = inconsistent(d.PROVIDER_FAILED, f"{words} ({reason})", verdict.transaction)
    return replace(held, hold_reason=reason)


def apply_provider_answer(
    verdict: Verdict, answer: ProviderAnswer, order: OrderRow | None = None
) -> Verdict:
    """Combine a database verdict of REGULARIZED with what the provider said: never guess."""
    if answer.status == ProviderStatus.COMPLETED:
        return _provider_amount_mismatch(verdict, answer, order) or verdict
    if answer.holds:
        reason = answer.reason or (
            HoldReason.REFUNDED if answer.status == ProviderStatus.REFUNDED else HoldReason.FAILED
        )
        return provider_hold(verdict, reason, f"provider reports the payment {answer.status}")
    detail = f" ({answer.detail})" if answer.detail else ""
    return Verdict(
        SKIPPED,
        f"provider reports {answer.status}{detail}: left for the next run",
        verdict.transaction,
    )


def _provider_amount_mismatch(
    verdict: Verdict, answer: ProviderAnswer, order: OrderRow | None
) -> Verdict | None:
    """Held when the provider captured another amount or currency than the order's, or None.

    Compared in minor units with the currency's ISO 4217 exponent. The database already
    proved the transaction's amount equals the order's total.
    """
    if answer.amount_minor is None and answer.currency is None:
        return None  # a generic provider whose answer carries neither
    tx = verdict.transaction
    ours = (tx.currency if tx is not None and tx.currency else None) or (
        order.currency if order is not None else None
    )
    theirs = answer.currency
    if ours and theirs and d.currency_code(ours) != d.currency_code(theirs):
        return provider_hold(
            verdict, HoldReason.CURRENCY_MISMATCH, "provider captured another currency"
        )
    currency = d.currency_code(ours) or d.currency_code(theirs) or ""
    due = money.to_minor(order.total if order is not None else tx.amount, currency)
    if answer.amount_minor is None or due is None or answer.amount_minor != due:
        captured = (
            "?" if answer.amount_minor is None else money.shown(answer.amount_minor, currency)
        )
        return provider_hold(
            verdict,
            HoldReason.AMOUNT_MISMATCH,
            f"provider captured {captured}, the order is for "
            f"{'?' if due is None else money.shown(due, currency)}",
        )
    return None


def verify(
    order: OrderRow,
    transactions: list[TransactionRow],
    statuses: StatusMapping,
    window: d.ScanWindow,
) -> Verdict:
    """The decision on one order, from its row and its payments as read under its lock."""
    completed = [t for t in transactions if t.status in statuses.transaction_completed]
    refused = _order_refused(order, completed, statuses)
    if refused is not None:
        return refused
    if not completed:
        return Verdict(SKIPPED, "order has no completed transaction")
    if len(completed) > 1:
        words = f"{len(completed)} completed transactions"
        return inconsistent(d.DOUBLE_CHARGE, words, completed[0])
    tx = completed[0]
    return payment_mismatch(order, tx) or _timing(tx, window)


def _order_refused(
    order: OrderRow, completed: list[TransactionRow], statuses: StatusMapping
) -> Verdict | None:
    """Why the order itself must not be flipped (deleted, completed, closed), or None."""
    if order.deleted_at is not None:
        return Verdict(SKIPPED, "order is soft-deleted")
    if order.status == statuses.order_completed:
        return Verdict(SKIPPED, "order is already completed (its webhook arrived)")
    if order.status in statuses.order_do_not_touch:
        if completed:
            words = f"order is {order.status!r} but has a completed transaction"
            return inconsistent(d.PAID_BUT_CLOSED, words, completed[0])
        return Verdict(SKIPPED, f"order status {order.status!r} is not to be touched")
    if order.status not in statuses.order_pending:
        return Verdict(SKIPPED, f"order status {order.status!r} is not a pending status")
    if order.guard_failures:
        guards = "; ".join(order.guard_failures)
        if completed:
            words = (
                f"a guard of the mapping holds the order ({guards}) "
                "but it has a completed transaction"
            )
            return inconsistent(d.PAID_BUT_CLOSED, words, completed[0])
        return Verdict(SKIPPED, f"a guard of the mapping holds the order ({guards})")
    return None


def payment_mismatch(order: OrderRow, tx: TransactionRow) -> Verdict | None:
    """Why the one completed payment does not pay for this order (amount, currency), or None."""
    paid, due = to_decimal(tx.amount), to_decimal(order.total)
    if paid is None or due is None or paid < 0 or due < 0:
        words = "order total or transaction amount is missing, not a number or negative"
        return inconsistent(d.INVALID_AMOUNT, words, tx)
    if paid != due:
        words = f"transaction amount {paid} differs from order total {due}"
        return inconsistent(d.AMOUNT_MISMATCH, words, tx)
    if _currencies_differ(tx.currency, order.currency):
        words = "transaction currency differs from the order's"
        return inconsistent(d.CURRENCY_MISMATCH, words, tx)
    return None


def _currencies_differ(paid_in, due_in) -> bool:
    """Both set and different, read as the scan's SQL reads them (``orphans.currency_code``)."""
    paid, due = d.currency_code(paid_in), d.currency_code(due_in)
    return paid is not None and due is not None and paid != due


def _timing(tx: TransactionRow, window: d.ScanWindow) -> Verdict:
    """Regularized when the payment completed inside the window; left alone otherwise."""
    if tx.completed_at is None:
        return Verdict(SKIPPED, "completed transaction has no completion time", tx)
    if tx.completed_at > window.not_after:
        return Verdict(SKIPPED, "payment is within the grace period: left to its webhook", tx)
    if window.not_before is not None and tx.completed_at < window.not_before:
        return Verdict(SKIPPED, "payment is older than the lookback window", tx)
    return Verdict(REGULARIZED, "completed transaction verified", tx)
