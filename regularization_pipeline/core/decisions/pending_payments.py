"""Payments the shop still has as pending, asked at the provider (opt-in: ``pending_payments``
in the provider settings).

A wholly lost webhook leaves the transaction pending too, so no orphan query finds
the order. For a pending order with a pending transaction that has a provider
reference and is older than the grace period, the provider is asked (before any
lock). Only a capture of the order's amount in its currency completes anything, and
then in one database transaction, under the order's row lock: the transaction row
(compare-and-set on its pending status, the columns ``pending_payments.set`` names)
and the order (the same compare-and-set, one ``OrderCompleted``, audit) as any
regularization. Every other answer leaves both alone, audited.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from regularization_pipeline.core import verdicts
from regularization_pipeline.core.decisions.audit import Decision, write_audit
from regularization_pipeline.core.decisions.context import (
    LOCKED_ELSEWHERE,
    OrderOutcome,
    RunContext,
)
from regularization_pipeline.core.decisions.verification import (
    Verdict,
    apply_provider_answer,
    payment_mismatch,
)
from regularization_pipeline.core.decisions.writes import write_decisions
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.errors import describe_error
from regularization_pipeline.core.provider.answers import ProviderError
from regularization_pipeline.core.shop.rows import TransactionRow

log = logging.getLogger("regularization_pipeline.regularizer")

CAPTURED = "pending payment captured at the provider: transaction and order completed"


class _Changed(Exception):
    """The order or its payment changed under the lock: roll back, leave both alone."""


def candidates(ctx: RunContext, statuses: list[str], limit: int) -> list[tuple[Any, Any]]:
    """(order id, transaction id) of pending orders whose pending payment is past the grace period."""
    s = ctx.schema
    if not s.has_t("reference") or limit <= 0:
        return []
    age = s.t("updated_at")
    query = (
        sa.select(s.o("id"), s.t("id"))
        .select_from(s.orders.join(s.transactions, s.t("order_id") == s.o("id")))
        .where(
            *d.order_is_pending(s),
            s.t("status").in_(statuses),
            s.t("reference").is_not(None),
            s.t("reference") != "",
            age <= s.shop_time(age, ctx.window.not_after),
            ~d.exists_payment(s, *d.completed_payment_of_order(s)),
            ~d.is_quarantined(s, ctx.tables.attempts),
        )
        .order_by(s.o("id"), s.t("id"))
        .limit(limit)
    )
    with ctx.engine.connect() as conn:
        return [(row[0], row[1]) for row in conn.execute(query)]


def settle(
    ctx: RunContext, verifier: Any, order_id: Any, tx_id: Any, settings: Any
) -> OrderOutcome:
    """Ask the provider about one pending payment, and complete it and its order if captured.

    Raises :class:`ProviderError` when the provider cannot answer (the caller stops asking).
    """
    statements, statuses = ctx.statements, list(settings.statuses)
    with ctx.engine.connect() as conn:
        order = statements.load_order(conn, order_id, lock=False)
        tx = _the_pending(statements.payments(conn, order_id), tx_id, statuses)
    if order is None or tx is None:
        return _audited(ctx, order_id, Verdict(verdicts.SKIPPED, "pending payment changed"))
    mismatch = payment_mismatch(order, tx)
    if mismatch is not None:
        return _audited(
            ctx, order_id, Verdict(verdicts.SKIPPED, f"pending payment: {mismatch.reason}", tx)
        )
    answer = verifier.check(order, tx)
    if answer.status == "completed" and answer.amount_minor is None:
        # Nothing in the shop says this payment completed: the provider's amount must.
        words = "pending payment left alone: the provider's answer carries no amount"
        return _audited(ctx, order_id, Verdict(verdicts.SKIPPED, words, tx))
    verdict = apply_provider_answer(Verdict(verdicts.REGULARIZED, CAPTURED, tx), answer, order)
    if verdict.action != verdicts.REGULARIZED:
        words = verdict.reason if verdict.kind else f"provider reports {answer.status}"
        return _audited(
            ctx, order_id, Verdict(verdicts.SKIPPED, f"pending payment left alone: {words}", tx)
        )
    try:
        with ctx.engine.begin() as conn:
            return _complete(ctx, conn, order_id, tx, statuses, settings)
    except _Changed as exc:
        return _audited(ctx, order_id, Verdict(verdicts.SKIPPED, str(exc), tx))


def _complete(ctx, conn, order_id, tx, statuses, settings) -> OrderOutcome:
    s, statements = ctx.schema, ctx.statements
    order = statements.load_order(conn, order_id, lock=True)
    if order is None:
        return OrderOutcome(order_id, verdicts.SKIPPED, LOCKED_ELSEWHERE)
    payments = statements.payments(conn, order_id)
    now = ctx.clock()
    locked_tx = _the_pending(payments, tx.id, statuses)
    if (
        order.status not in s.statuses.order_pending
        or order.deleted_at is not None
        or locked_tx is None
        or locked_tx.amount != tx.amount
        or any(p.status in s.statuses.transaction_completed for p in payments)
    ):
        raise _Changed("order or payment changed since the provider was asked: left alone")
    completed = s.statuses.transaction_completed[0]
    if not ctx.dry_run:
        values: dict[str, Any] = {s.mapping.transactions.status: completed}
        for column in ("completed_at", "updated_at"):
            if s.has_t(column):
                values[getattr(s.mapping.transactions, column)] = s.shop_time(s.t(column), now)
        for column, value in settings.set.items():
            values[column] = (
                s.shop_time(s.transactions.c[column], now) if value == "{now}" else value
            )
        moved = conn.execute(
            s.transactions.update()
            .where(s.t("id") == tx.id, s.t("status").in_(statuses))
            .values(values)
        ).rowcount
        if moved != 1:
            raise _Changed("payment changed since the provider was asked: left alone")
    paid = TransactionRow(tx.id, completed, tx.amount, tx.currency, now, tx.reference)
    (outcome,) = write_decisions(
        ctx, conn, [Decision(order_id, Verdict(verdicts.REGULARIZED, CAPTURED, paid), order)]
    )
    if outcome.action not in (verdicts.REGULARIZED, verdicts.DRY_RUN):
        raise _Changed("order changed before the flip: left alone")
    return outcome


def _the_pending(
    payments: list[TransactionRow], tx_id: Any, statuses: list[str]
) -> TransactionRow | None:
    for payment in payments:
        if str(payment.id) == str(tx_id) and payment.status in statuses:
            return payment
    return None


def _audited(ctx: RunContext, order_id: Any, verdict: Verdict) -> OrderOutcome:
    log.info("order %s: %s", order_id, verdict.reason)
    with ctx.engine.begin() as conn:
        return write_audit(ctx, conn, [Decision(order_id, verdict)])[0]


def provider_error_outcome(ctx: RunContext, order_id: Any, exc: ProviderError) -> OrderOutcome:
    """A pending payment the provider could not answer about: audited, asked again next run."""
    return _audited(
        ctx,
        order_id,
        Verdict(verdicts.SKIPPED, f"pending payment not asked: {describe_error(exc)}"),
    )
