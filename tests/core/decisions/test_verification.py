"""verification.verify(): every rule of the per-order decision, with plain values, no database."""

import datetime as dt
from decimal import Decimal

import pytest

from regularization_pipeline.core.decisions.verification import (
    Verdict,
    apply_provider_answer,
    verify,
)
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.provider.answers import ProviderAnswer, ProviderStatus
from regularization_pipeline.core.shop.mapping import StatusMapping
from regularization_pipeline.core.shop.rows import OrderRow, TransactionRow, to_decimal
from regularization_pipeline.core.verdicts import INCONSISTENT, REGULARIZED, SKIPPED

NOW = dt.datetime(2026, 1, 10, 12, 0, 0)
STATUSES = StatusMapping()
WINDOW = d.ScanWindow(now=NOW, min_age_minutes=10, lookback_hours=24)
PAID = NOW - dt.timedelta(hours=1)


def order(**kw):
    return OrderRow(**{"id": 1, "status": "pending", "total": "49.90", "currency": "EUR", **kw})


def tx(**kw):
    return TransactionRow(
        **{
            "id": 10,
            "status": "completed",
            "amount": "49.90",
            "currency": "EUR",
            "completed_at": PAID,
            **kw,
        }
    )


def check(o, txs, window=WINDOW, statuses=STATUSES) -> Verdict:
    return verify(o, txs, statuses, window)


def test_pending_order_with_one_matching_completed_payment_is_regularized():
    verdict = check(order(), [tx(), tx(id=11, status="failed", amount="1")])
    assert (verdict.action, verdict.transaction.id) == (REGULARIZED, 10)


def test_amounts_compare_as_decimals_not_strings():
    assert check(order(total=Decimal("49.9")), [tx(amount="49.900000")]).action == REGULARIZED


def test_currency_compares_case_and_space_insensitively():
    assert check(order(currency="eur"), [tx(currency=" EUR ")]).action == REGULARIZED


def test_missing_currency_on_either_side_does_not_block():
    assert check(order(currency=None), [tx()]).action == REGULARIZED
    assert check(order(), [tx(currency=None)]).action == REGULARIZED


@pytest.mark.parametrize(
    ("o", "reason"),
    [
        (order(deleted_at=NOW), "soft-deleted"),
        (order(status="completed"), "already completed"),
        (order(status="processing"), "not a pending status"),
    ],
)
def test_orders_that_are_not_live_and_pending_are_skipped(o, reason):
    verdict = check(o, [tx()])
    assert verdict.action == SKIPPED
    assert reason in verdict.reason


def test_no_completed_transaction_is_skipped():
    verdict = check(order(), [tx(status="failed"), tx(id=11, status="pending")])
    assert (verdict.action, verdict.reason) == (SKIPPED, "order has no completed transaction")


@pytest.mark.parametrize("status", ["cancelled", "canceled", "failed", "refunded"])
def test_paid_but_closed_order_is_inconsistent_and_unpaid_closed_order_is_skipped(status):
    verdict = check(order(status=status), [tx()])
    assert verdict.action == INCONSISTENT
    assert verdict.reason.startswith(d.PAID_BUT_CLOSED)
    assert check(order(status=status), [tx(status="failed")]).action == SKIPPED


def test_two_completed_transactions_are_a_double_charge():
    verdict = check(order(), [tx(), tx(id=11)])
    assert verdict.action == INCONSISTENT
    assert verdict.reason.startswith(d.DOUBLE_CHARGE)


@pytest.mark.parametrize(
    ("total", "amount"),
    [
        (None, "49.90"),
        ("49.90", None),
        ("49.90", "-49.90"),
        ("-1", "-1"),
        ("abc", "49.90"),
        ("49.90", "NaN"),
        ("49.90", True),
    ],
)
def test_missing_negative_or_non_numeric_amount_is_invalid(total, amount):
    verdict = check(order(total=total), [tx(amount=amount)])
    assert verdict.action == INCONSISTENT
    assert verdict.reason.startswith(d.INVALID_AMOUNT)


def test_amount_mismatch_is_inconsistent():
    verdict = check(order(total="49.90"), [tx(amount="49.89")])
    assert verdict.action == INCONSISTENT
    assert verdict.reason.startswith(d.AMOUNT_MISMATCH)


def test_currency_mismatch_is_inconsistent():
    verdict = check(order(currency="EUR"), [tx(currency="USD")])
    assert verdict.action == INCONSISTENT
    assert verdict.reason.startswith(d.CURRENCY_MISMATCH)


def test_payment_without_completion_time_is_skipped():
    assert check(order(), [tx(completed_at=None)]).action == SKIPPED


def test_payment_inside_grace_period_is_left_to_its_webhook():
    verdict = check(order(), [tx(completed_at=NOW - dt.timedelta(minutes=9))])
    assert verdict.action == SKIPPED
    assert "grace period" in verdict.reason
    assert check(order(), [tx(completed_at=NOW - dt.timedelta(minutes=10))]).action == REGULARIZED


def test_payment_older_than_lookback_is_skipped():
    verdict = check(order(), [tx(completed_at=NOW - dt.timedelta(hours=25))])
    assert verdict.action == SKIPPED
    assert "lookback" in verdict.reason
    unbounded = d.ScanWindow(now=NOW, min_age_minutes=10)
    assert (
        check(order(), [tx(completed_at=NOW - dt.timedelta(days=400))], window=unbounded).action
        == REGULARIZED
    )


def test_until_bounds_the_window_before_the_grace_cutoff():
    window = d.ScanWindow(now=NOW, min_age_minutes=0, until=PAID - dt.timedelta(minutes=1))
    assert check(order(), [tx()], window=window).action == SKIPPED


def test_status_values_are_compared_exactly_under_a_custom_mapping():
    upper = StatusMapping(
        order_pending=("PENDING", "PENDING_PAYMENT"),
        order_completed="COMPLETED",
        order_do_not_touch=("CANCELLED",),
        transaction_completed=("PAID",),
    )
    assert (
        check(order(status="PENDING_PAYMENT"), [tx(status="PAID")], statuses=upper).action
        == REGULARIZED
    )
    assert check(order(status="pending"), [tx(status="PAID")], statuses=upper).action == SKIPPED
    assert (
        check(order(status="PENDING"), [tx(status="completed")], statuses=upper).action == SKIPPED
    )


def test_provider_answer_never_overrides_into_a_flip():
    ok = Verdict(REGULARIZED, "completed transaction verified", tx())
    assert apply_provider_answer(ok, ProviderAnswer(ProviderStatus.COMPLETED)) is ok
    for status in (ProviderStatus.FAILED, ProviderStatus.REFUNDED):
        verdict = apply_provider_answer(ok, ProviderAnswer(status))
        assert verdict.action == INCONSISTENT
        assert verdict.reason.startswith(d.PROVIDER_FAILED)
    assert (
        apply_provider_answer(ok, ProviderAnswer(ProviderStatus.PENDING, "still settling")).action
        == SKIPPED
    )


def test_to_decimal_refuses_what_is_not_a_finite_number():
    assert to_decimal("12.50") == Decimal("12.50")
    assert to_decimal(3) == Decimal(3)
    for bad in (None, "", "twelve", "Infinity", "NaN", False):
        assert to_decimal(bad) is None
