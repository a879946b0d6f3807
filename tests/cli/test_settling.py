"""What a human settles an inconsistency with, on real SQLite, PostgreSQL and MariaDB: the
figures `list-inconsistencies` shows per order, the audit's `inconsistent` rows carrying the
transaction and amounts, and `explain --order-id`, which says what a run would do and why and
changes no row; `regularize-order` takes the run's own decision as its gate."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal

import pytest

from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from tests.cli.test_operator_tools import run_cli, snapshot  # noqa: F401 - the fixture
from tests.support.rows import audit_of


def _set_total(shop, order_id, total) -> None:
    with shop.engine.begin() as conn:
        conn.execute(
            shop.tables.orders.update()
            .where(shop.tables.orders.c.id == order_id)
            .values(total=total)
        )


def _tx_ids(shop, order_id) -> list:
    t = shop.tables.transactions
    with shop.engine.connect() as conn:
        return list(
            conn.execute(
                t.select()
                .with_only_columns(t.c.id)
                .where(t.c.order_id == order_id)
                .order_by(t.c.id)
            ).scalars()
        )


def _csv(out: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(out)))


def test_list_inconsistencies_shows_the_figures_to_settle_each_order(shop, run_cli):  # noqa: F811
    mismatch = shop.orphan(amount="90.00", paid_minutes_ago=60)
    _set_total(shop, mismatch, "100.00")
    double = shop.orphan(paid_minutes_ago=60)
    shop.payment(double, completed_minutes_ago=30)
    shop.orphan()  # consistent
    before = snapshot(shop)

    code, out, _err = run_cli("list-inconsistencies", "--format", "csv")

    assert code == 0
    rows = _csv(out)
    assert list(rows[0]) == [
        "kind",
        "order_id",
        "order_status",
        "order_total",
        "order_currency",
        "transaction_id",
        "amount",
        "currency",
        "completed_at_utc",
    ]
    by_kind = {}
    for row in rows:
        by_kind.setdefault(row["kind"], []).append(row)
    (amount,) = by_kind["amount_mismatch"]
    assert (amount["order_id"], amount["order_status"], amount["order_total"]) == (
        str(mismatch),
        "pending",
        "100.00",
    )
    assert (amount["transaction_id"], amount["amount"], amount["currency"]) == (
        str(_tx_ids(shop, mismatch)[0]),
        "90.00",
        "EUR",
    )
    assert amount["order_currency"] == "EUR" and amount["completed_at_utc"].endswith(" UTC")
    charges = by_kind["double_charge"]
    assert [r["transaction_id"] for r in charges] == [str(i) for i in _tx_ids(shop, double)]
    assert {r["order_id"] for r in charges} == {str(double)}
    assert snapshot(shop) == before


def test_an_inconsistent_audit_row_carries_the_transaction_and_the_amounts(shop):
    mismatch = shop.orphan(amount="90.00")
    _set_total(shop, mismatch, "100.00")
    double = shop.orphan()
    shop.payment(double)

    Regularizer(shop.engine, shop.schema).run(RunOptions(sleep=0), run_id="r1")

    (row,) = [r for r in audit_of(shop, mismatch) if r.action == "inconsistent"]
    assert (row.transaction_id, Decimal(row.order_amount), Decimal(row.transaction_amount)) == (
        str(_tx_ids(shop, mismatch)[0]),
        Decimal("100.00"),
        Decimal("90.00"),
    )
    assert (row.currency, row.order_status) == ("EUR", "pending")
    assert row.transaction_completed_at is not None
    (row,) = [r for r in audit_of(shop, double) if r.action == "inconsistent"]
    first, second = _tx_ids(shop, double)
    assert row.transaction_id == str(first)
    assert row.reason == f"double_charge: reported, not fixed (transactions {first}, {second})"


@pytest.mark.parametrize(
    ("make", "decision"),
    [
        (lambda shop: shop.orphan(), "a run would regularize it: completed transaction verified"),
        (
            lambda shop: _mismatch(shop),
            "a run holds it for a human and changes nothing: amount_mismatch: transaction "
            "amount 90",
        ),
        (
            lambda shop: shop.orphan(paid_minutes_ago=2),
            "a run leaves it: payment is within the grace period: left to its webhook",
        ),
        (lambda shop: shop.order(), "a run leaves it: order has no completed transaction"),
    ],
    ids=["fixable", "amount-mismatch", "within-grace", "unpaid"],
)
def test_explain_says_what_a_run_would_do_and_why_and_changes_nothing(
    shop,
    run_cli,  # noqa: F811
    make,
    decision,
):
    order_id = make(shop)
    before = snapshot(shop)
    code, out, err = run_cli("explain", "--order-id", str(order_id))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"order {order_id}: status 'pending', total ")
    assert lines[-1].startswith(decision), lines[-1]
    assert snapshot(shop) == before  # every row of the shop and of our tables


def _mismatch(shop):
    order_id = shop.orphan(amount="90.00")
    _set_total(shop, order_id, "100.00")
    return order_id


def test_explain_lists_each_payment_and_refuses_an_unknown_order(shop, run_cli):  # noqa: F811
    order_id = shop.orphan()
    tx = shop.payment(order_id)
    code, out, _ = run_cli("explain", "--order-id", str(order_id))
    assert code == 0
    assert f"  transaction {tx}: completed, 49.90 EUR, at " in out and " UTC" in out
    assert "a run holds it for a human and changes nothing: double_charge: 2 completed" in out
    before = snapshot(shop)
    code, _out, err = run_cli("explain", "--order-id", "999999")
    assert (code, err.strip()) == (2, "error: order 999999 does not exist")
    assert snapshot(shop) == before


def test_regularize_order_refuses_what_a_run_would_hold_and_writes_nothing(
    shop,
    run_cli,  # noqa: F811
):
    order_id = _mismatch(shop)
    before = snapshot(shop)
    code, _out, err = run_cli("regularize-order", "--order-id", str(order_id))
    assert code == 2
    # The amounts as the backend returns them (90 on SQLite, 90.00 on the servers).
    assert re.fullmatch(
        rf"error: order {order_id} is held for a human, a run never fixes it \(amount_mismatch: "
        r"transaction amount 90(\.00)? differs from order total 100(\.00)?\): nothing to regularize",
        err.strip(),
    ), err
    assert snapshot(shop) == before  # not even an audit row
