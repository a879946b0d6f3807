"""Guards, repairs and currencies of any type: refused when malformed, honoured by the flip's own
compare-and-set, by the decision under the lock and by every scan; integer currencies compared
as ids on every backend (PostgreSQL has no upper() of an integer)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.decisions.context import OrderStatements
from regularization_pipeline.core.decisions.verification import verify
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.detection.scans import inconsistency_report
from regularization_pipeline.core.errors import ConfigurationError, SchemaMismatchError
from regularization_pipeline.core.operations.doctor import diagnose
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.core.shop.binding import bind_schema
from regularization_pipeline.core.shop.mapping import SchemaMapping, StatusMapping
from regularization_pipeline.core.shop.rows import OrderRow, TransactionRow
from regularization_pipeline.core.verdicts import INCONSISTENT, REGULARIZED, SKIPPED
from tests.support.rows import no_sleep, outbox_per_order
from tests.support.shop_tables import Shop

# --- refused before any database work ---------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"guards": {"require": [{"column": "state"}]}}, ["guards.require.0", "exactly one"]),
        (
            {"guards": {"do_not_touch": [{"column": "state", "in": ["a"], "is_null": True}]}},
            ["guards.do_not_touch.0", "exactly one"],
        ),
        ({"guards": {"require": [{"column": "state", "in": []}]}}, ["guards.require.0.in"]),
        ({"guards": {"require": [{"column": "st ate", "in": ["a"]}]}}, ["guards.require.0.column"]),
        ({"guards": {"require": [{"column": "state", "in": [""]}]}}, ["empty value"]),
        ({"guards": {"when": []}}, ["guards.when"]),
        ({"repairs": {"status": {"value": "paid"}}}, ["repairs.status"]),
        ({"repairs": {"updated_at": {"now": True}}}, ["repairs.updated_at"]),
        ({"repairs": {"paid_total": {"copy": "paid_total"}}}, ["copies itself"]),
        ({"repairs": {"paid_at": {"now": False}}}, ["exactly one"]),
        ({"repairs": {"paid_at": {"now": True, "value": 1}}}, ["exactly one"]),
        ({"repairs": {"x;y": {"value": 1}}}, ["repairs", "not a valid"]),
    ],
)
def test_malformed_guards_and_repairs_are_refused_naming_the_field(raw, words):
    with pytest.raises(ConfigurationError) as err:
        SchemaMapping.parse(raw)
    for word in words:
        assert word in str(err.value)


def test_a_guard_on_a_column_the_table_lacks_is_refused_at_bind(engine):
    md = _tables(sa.Integer)
    md.create_all(engine)
    mapping = SchemaMapping.parse(
        {**MAPPING, "guards": {"do_not_touch": [{"column": "is_draft", "in": [1]}]}}
    )
    with pytest.raises(SchemaMismatchError, match="'shop_orders' lacks column.*'is_draft'"):
        bind_schema(engine, mapping)


def test_the_decision_reports_a_paid_order_a_guard_holds_and_skips_an_unpaid_one():
    window = d.ScanWindow(now=dt.datetime(2026, 1, 1, 12))
    paid = TransactionRow(7, "completed", "10", completed_at=dt.datetime(2026, 1, 1, 11))
    held = OrderRow(1, "pending", "10", guard_failures=("do not touch when state in ['canceled']",))
    verdict = verify(held, [paid], StatusMapping(), window)
    assert verdict.action == INCONSISTENT
    assert verdict.reason.startswith(f"{d.PAID_BUT_CLOSED}: a guard of the mapping holds")
    assert "state in ['canceled']" in verdict.reason
    assert verify(held, [], StatusMapping(), window).action == SKIPPED
    assert verify(OrderRow(1, "pending", "10"), [paid], StatusMapping(), window).action == (
        REGULARIZED
    )


# --- a shop with an order state beside its payment state, and an integer currency ------------

MAPPING = {
    "orders": {
        "table": "shop_orders",
        "status": "payment_state",
        "currency": "currency_id",
        "deleted_at": None,
    },
    "transactions": {"table": "shop_payments", "currency": "currency_id", "completed_at": None},
    "statuses": {"order_pending": ["unpaid"], "order_completed": "paid"},
    "guards": {
        "require": [{"column": "checkout", "not_in": ["cart"]}],
        "do_not_touch": [
            {"column": "state", "in": ["canceled", "expired"]},
            {"column": "canceled_at", "is_null": False},
        ],
    },
    "repairs": {
        "paid_amount": {"copy": "total"},
        "paid_at": {"now": True},
        "charge_flag": {"value": 1},
    },
}


def _tables(currency: sa.types.TypeEngine) -> sa.MetaData:
    md = sa.MetaData()
    sa.Table(
        "shop_orders",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("payment_state", sa.String(20), nullable=False),
        sa.Column("state", sa.String(20)),
        sa.Column("checkout", sa.String(20)),
        sa.Column("canceled_at", sa.DateTime),
        sa.Column("total", sa.Numeric(10, 2)),
        sa.Column("currency_id", currency),
        sa.Column("paid_amount", sa.Numeric(10, 2)),
        sa.Column("paid_at", sa.DateTime),
        sa.Column("charge_flag", sa.Integer, nullable=False, default=0),
        sa.Column("created_at", sa.DateTime),
        sa.Column("updated_at", sa.DateTime),
    )
    sa.Table(
        "shop_payments",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("order_id", sa.Integer, index=True),
        sa.Column("status", sa.String(20)),
        sa.Column("amount", sa.Numeric(10, 2)),
        sa.Column("currency_id", currency),
        sa.Column("updated_at", sa.DateTime),
    )
    return md


def _order(shop: Shop, currency=3, **values):
    row = {
        "payment_state": "unpaid",
        "state": "open",
        "checkout": "done",
        "total": Decimal("10.00"),
        "currency_id": currency,
        "created_at": shop.at(90),
        "updated_at": shop.at(90),
        **values,
    }
    return shop.insert("shop_orders", **row)


def _paid(shop: Shop, order_id, currency=3, amount="10.00"):
    shop.insert(
        "shop_payments",
        order_id=order_id,
        status="completed",
        amount=Decimal(amount),
        currency_id=currency,
        updated_at=shop.at(60),
    )


def test_the_flip_itself_moves_no_order_a_guard_holds(engine):
    """The compare-and-set carries the guards: an order cancelled after the decision stays put."""
    shop = Shop(engine, _tables(sa.Integer), MAPPING)
    open_ = _order(shop)
    cancelled = _order(shop, state="canceled")
    dated = _order(shop, canceled_at=shop.at(5))
    in_cart = _order(shop, checkout="cart")
    no_checkout = _order(shop, checkout=None)  # NULL satisfies no `not_in`: when in doubt, hold
    no_state = _order(shop, state=None)  # NULL is in no do-not-touch list: not a closed order
    statements = OrderStatements(engine, shop.schema, tb.owned_tables("regularization_"))
    ids = [open_, cancelled, dated, in_cart, no_checkout, no_state]
    with engine.begin() as conn:
        moved = conn.execute(statements.flip, statements.flip_params(ids, shop.now)).rowcount
    assert moved == 2
    for key in ids:
        row = shop.row("shop_orders", key, "payment_state", "paid_amount", "charge_flag")
        expected = (
            {"payment_state": "paid", "paid_amount": Decimal("10.00"), "charge_flag": 1}
            if key in (open_, no_state)
            else {"payment_state": "unpaid", "paid_amount": None, "charge_flag": 0}
        )
        assert row == expected, key
    paid_at = shop.row("shop_orders", open_, "paid_at")["paid_at"]
    assert abs(paid_at - shop.now) < dt.timedelta(seconds=1)


def test_guards_and_integer_currencies_through_a_run_the_scans_and_doctor(server_engine):
    shop = Shop(server_engine, _tables(sa.Integer), MAPPING)
    orphan = _order(shop)
    _paid(shop, orphan)
    cancelled = _order(shop, state="expired")
    _paid(shop, cancelled)
    in_cart = _order(shop, checkout="cart")
    _paid(shop, in_cart)
    other_currency = _order(shop, currency=4)
    _paid(shop, other_currency, currency=3)
    s = shop.schema
    assert s.currency_is_text is False

    with server_engine.connect() as conn:
        report = inconsistency_report(conn, s)
        doctor = diagnose(conn, s, now=shop.now)
    assert report.order_ids[d.PAID_BUT_CLOSED] == [cancelled, in_cart]
    assert report.order_ids[d.CURRENCY_MISMATCH] == [other_currency]
    assert doctor.refusals == [], doctor.refusals
    columns = dict(doctor.sections)["other status-like columns of shop_orders"]
    assert "state: guarded (state in ['canceled', 'expired'])" in columns
    assert "canceled_at: set on 0 order(s), guarded (do not touch when set)" in columns
    assert dict(doctor.sections)["what a flip checks and writes"] == [
        "only orders with payment_state in ['unpaid']",
        "  and checkout not in ['cart']",
        "  and not state in ['canceled', 'expired']",
        "  and not canceled_at is set",
        "sets payment_state = 'paid'",
        "sets updated_at = the current time",
        "sets paid_amount = the order's total",
        "sets paid_at = the current time",
        "sets charge_flag = 1",
    ]

    summary = Regularizer(server_engine, s, sleeper=no_sleep).run(RunOptions(sleep=0))

    assert summary.regularized == 1
    assert outbox_per_order(server_engine) == {str(orphan): 1}
    for key in (cancelled, in_cart, other_currency):
        assert shop.row("shop_orders", key, "payment_state") == {"payment_state": "unpaid"}
    assert shop.row("shop_orders", orphan, "payment_state", "paid_amount", "charge_flag") == {
        "payment_state": "paid",
        "paid_amount": Decimal("10.00"),
        "charge_flag": 1,
    }


def test_doctor_refuses_an_unguarded_state_column_that_says_canceled(server_engine):
    unguarded = {k: v for k, v in MAPPING.items() if k != "guards"}
    shop = Shop(server_engine, _tables(sa.String(3)), unguarded)
    _paid(shop, _order(shop, currency="EUR"), currency="eur")  # case-insensitive codes
    _paid(shop, _order(shop, currency="EUR", state="canceled"), currency="EUR")
    _order(shop, currency="EUR", state="expired")  # pending, unpaid: a warning only
    with server_engine.connect() as conn:
        report = diagnose(conn, shop.schema, now=shop.now)
        fixable = conn.execute(
            sa.select(sa.func.count()).where(
                d.regularizable_condition(shop.schema, d.ScanWindow(now=shop.now))
            )
        ).scalar_one()
    assert fixable == 2
    assert report.refusals == [
        "shop_orders.state holds 'canceled', which reads as a closed order, and no guard keeps "
        "such orders from being flipped (add guards.do_not_touch: [{column: state, in: "
        "[canceled]}]): a run would complete 1 such order(s) now"
    ]
    assert any(w.startswith("shop_orders.state holds 'expired'") for w in report.warnings)


def test_a_currency_id_is_read_as_its_code_through_the_currencies_table(server_engine):
    """The order holds an id into the shop's currencies, the payment a code (as a PSP reports it)."""
    md = _tables(sa.Integer)
    md.tables["shop_payments"].append_column(sa.Column("currency_code", sa.String(3)))
    sa.Table(
        "shop_currencies",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("iso_code", sa.String(3), nullable=False),
    )
    raw = {
        **MAPPING,
        "transactions": {**MAPPING["transactions"], "currency": "currency_code"},
        "guards": {},
    }
    with pytest.raises(SchemaMismatchError, match="name the currency table under `currencies`"):
        Shop(server_engine, md, raw)
    raw["currencies"] = {"table": "shop_currencies", "code": "iso_code"}
    shop = Shop(server_engine, md, raw)
    shop.insert("shop_currencies", id=1, iso_code="EUR")
    shop.insert("shop_currencies", id=2, iso_code="USD")
    euros, dollars = _order(shop, currency=1), _order(shop, currency=2)
    for key in (euros, dollars):
        shop.insert(
            "shop_payments",
            order_id=key,
            status="completed",
            amount=Decimal("10.00"),
            currency_code="eur",
            updated_at=shop.at(60),
        )
    with server_engine.connect() as conn:
        report = inconsistency_report(conn, shop.schema)
        fixable = d.orphan_stats(conn, shop.schema, d.ScanWindow(now=shop.now)).count
    assert report.order_ids[d.CURRENCY_MISMATCH] == [dollars]
    assert fixable == 1

    summary = Regularizer(server_engine, shop.schema, sleeper=no_sleep).run(RunOptions(sleep=0))

    assert summary.regularized == 1
    assert outbox_per_order(server_engine) == {str(euros): 1}
    assert shop.row("shop_orders", dollars, "payment_state") == {"payment_state": "unpaid"}


# --- payments reached through a link table (many-to-many) -----------------------------------


def _linked_tables() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table(
        "sales_orders",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("total", sa.Numeric(10, 2)),
        sa.Column("currency", sa.String(3)),
        sa.Column("created_at", sa.DateTime),
        sa.Column("updated_at", sa.DateTime),
    )
    sa.Table(
        "payments",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("status", sa.String(20)),
        sa.Column("amount", sa.Numeric(10, 2)),
        sa.Column("currency", sa.String(3)),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
    )
    sa.Table(
        "order_payments",
        md,
        sa.Column("order_id", sa.Integer, primary_key=True),
        sa.Column("payment_id", sa.Integer, primary_key=True),
    )
    return md


LINKED = {
    "orders": {"table": "sales_orders", "deleted_at": None},
    "transactions": {"table": "payments", "order_id": "order_id"},
    "payment_links": {"table": "order_payments"},
}


def test_payments_through_a_link_table_keep_double_charges_per_order_exact(server_engine):
    shop = Shop(server_engine, _linked_tables(), LINKED)
    aware = server_engine.dialect.name == "postgresql"

    def order(total="10.00"):
        return shop.insert(
            "sales_orders",
            status="pending",
            total=Decimal(total),
            currency="EUR",
            created_at=shop.at(90),
            updated_at=shop.at(90),
        )

    def payment(*orders, amount="10.00", status="completed", ago=60):
        when = shop.at(ago).replace(tzinfo=dt.UTC) if aware else shop.at(ago)
        key = shop.insert(
            "payments",
            status=status,
            amount=Decimal(amount),
            currency="EUR",
            completed_at=when,
            updated_at=when,
        )
        for order_id in orders:
            shop.insert("order_payments", order_id=order_id, payment_id=key)
        return key

    single = order()
    payment(single)
    retried = order()
    payment(retried, status="failed")
    payment(retried)
    first_half, second_half = order(), order()
    payment(first_half, second_half, amount="20.00")  # one charge for two orders: pays neither
    twice = order()
    payment(twice)
    payment(twice)
    recent = order()
    payment(recent, ago=2)
    payment(9999)  # a link to an order that does not exist

    with server_engine.connect() as conn:
        report = inconsistency_report(conn, shop.schema)
    assert report.order_ids[d.AMOUNT_MISMATCH] == [first_half, second_half]
    assert report.order_ids[d.DOUBLE_CHARGE] == [twice]
    assert report.order_ids[d.MISSING_ORDER] == [9999]
    with server_engine.connect() as conn:
        doctor = diagnose(conn, shop.schema, now=shop.now)
    statements = dict(doctor.sections)["statements for this mapping"]
    assert any("ix_order_payments_order_payment" in line for line in statements)
    assert any(
        line.startswith("GRANT SELECT ON") and "order_payments" in line for line in statements
    )
    assert (
        "'completed': 8 transaction(s), completed" in dict(doctor.sections)["transaction statuses"]
    )

    first = Regularizer(server_engine, shop.schema, sleeper=no_sleep).run(RunOptions(sleep=0))
    again = Regularizer(server_engine, shop.schema, sleeper=no_sleep).run(RunOptions(sleep=0))

    assert (first.regularized, again.regularized) == (2, 0)
    assert outbox_per_order(server_engine) == {str(single): 1, str(retried): 1}
    for key in (first_half, second_half, twice, recent):
        assert shop.row("sales_orders", key, "status") == {"status": "pending"}


def test_payment_rows_only_keeps_the_rows_that_are_payments(server_engine):
    """Refunds in the payments table, completed too: without the filter each order is a double charge."""
    md = _tables(sa.String(3))
    md.tables["shop_payments"].append_column(sa.Column("kind", sa.String(10)))
    raw = {
        **MAPPING,
        "guards": {},
        "payment_rows": {"only": [{"column": "kind", "in": ["charge"]}]},
    }
    shop = Shop(server_engine, md, raw)
    key = _order(shop, currency="EUR")
    for kind in ("charge", "refund"):
        shop.insert(
            "shop_payments",
            order_id=key,
            status="completed",
            kind=kind,
            amount=Decimal("10.00"),
            currency_id="EUR",
            updated_at=shop.at(60),
        )
    unfiltered = bind_schema(server_engine, SchemaMapping.parse({**raw, "payment_rows": {}}))
    with server_engine.connect() as conn:
        assert inconsistency_report(conn, unfiltered).order_ids[d.DOUBLE_CHARGE] == [key]
        assert inconsistency_report(conn, shop.schema).total == 0

    summary = Regularizer(server_engine, shop.schema, sleeper=no_sleep).run(RunOptions(sleep=0))

    assert summary.regularized == 1
    assert outbox_per_order(server_engine) == {str(key): 1}
