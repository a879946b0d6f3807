"""The recipes of docs/schema.md on the real tables of open-source shops, on PostgreSQL and MariaDB.

Each shop's tables are built with the columns that matter, named and typed as the shop's own
migration or model creates them (the source file is named with each), then seeded with orphans
and traps: orders a guard excludes, partial captures, refunds, double charges, amount and
currency mismatches, recent payments. A run must flip every orphan exactly once with every
repaired column right, flip no trap, and report each trap with its kind; doctor must pass the
recipe and refuse the same recipe without its guards.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.detection.scans import inconsistency_report
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.operations.doctor import diagnose
from regularization_pipeline.core.operations.operator_tools import orphan_rows
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.binding import bind_schema
from regularization_pipeline.core.shop.mapping import SchemaMapping
from regularization_pipeline.core.verdicts import INCONSISTENT, SKIPPED
from tests.support.rows import no_sleep, outbox_per_order
from tests.support.shop_tables import Shop

RECIPES = Path(__file__).resolve().parents[3] / "docs" / "examples" / "recipes"
PAID_LONG_AGO, PAID_JUST_NOW = 60, 2  # minutes; the grace period is 10


def recipe(name: str) -> dict:
    return yaml.safe_load((RECIPES / f"{name}.yaml").read_text(encoding="utf-8"))


@dataclass
class Seeded:
    """What a shop was seeded with: per order, what the run must leave in its row."""

    flipped: dict = field(default_factory=dict)  # order id -> {column: value after the run}
    held: dict = field(default_factory=dict)  # order id -> reported kind, or None (left alone)
    untouched: dict = field(default_factory=dict)  # order id -> {column: value it keeps}


def _aware(column_time: dt.datetime, engine: sa.Engine) -> dt.datetime:
    """Django's DateTimeField is timestamptz on PostgreSQL: give it the UTC zone it means."""
    return (
        column_time.replace(tzinfo=dt.UTC) if engine.dialect.name == "postgresql" else column_time
    )


# --- Saleor ---------------------------------------------------------------------------------
# saleor/order/models.py (class Order, db_table order_order) and saleor/payment/models.py
# (class Payment, payment_payment); status choices as in
# saleor/order/migrations/0164_alter_order_status.py. Saleor runs on PostgreSQL only.


def saleor_tables() -> sa.MetaData:
    md = sa.MetaData()
    money = sa.Numeric(12, 3)
    sa.Table(
        "order_order",
        md,
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("charge_status", sa.String(32), nullable=False),
        sa.Column("authorize_status", sa.String(32), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("total_gross_amount", money, nullable=False),
        sa.Column("total_charged_amount", money, nullable=False),
    )
    sa.Table(
        "payment_payment",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("order_id", sa.Uuid, sa.ForeignKey("order_order.id"), index=True),
        sa.Column("charge_status", sa.String(20), nullable=False),
        sa.Column("total", money, nullable=False),
        sa.Column("captured_amount", money, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("is_active", sa.Boolean, nullable=False),
        sa.Column("psp_reference", sa.String(512)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modified_at", sa.DateTime(timezone=True), nullable=False),
    )
    return md


def seed_saleor(shop: Shop) -> Seeded:
    import uuid

    seeded = Seeded()

    def order(status="unfulfilled", total="49.900", currency="USD"):
        return shop.insert(
            "order_order",
            id=uuid.uuid4(),
            created_at=_aware(shop.at(120), shop.engine),
            updated_at=_aware(shop.at(120), shop.engine),
            status=status,
            charge_status="none",
            authorize_status="none",
            currency=currency,
            total_gross_amount=Decimal(total),
            total_charged_amount=Decimal("0"),
        )

    def payment(order_id, charge="fully-charged", captured="49.900", currency="USD", ago=60):
        shop.insert(
            "payment_payment",
            order_id=order_id,
            charge_status=charge,
            total=Decimal("49.900"),
            captured_amount=Decimal(captured),
            currency=currency,
            is_active=True,
            psp_reference="pi_x",
            created_at=_aware(shop.at(ago + 1), shop.engine),
            modified_at=_aware(shop.at(ago), shop.engine),
        )

    for status in ("unfulfilled", "unconfirmed"):
        key = order(status)
        payment(key)
        seeded.flipped[key] = {
            "charge_status": "full",
            "total_charged_amount": Decimal("49.900"),
            "status": status,
        }
    for status in ("canceled", "expired", "draft"):
        key = order(status)
        payment(key)
        seeded.held[key] = d.PAID_BUT_CLOSED
    key = order()
    payment(key, charge="partially-charged", captured="20.000")  # partial capture: not paid
    seeded.held[key] = None
    key = order()
    payment(key, charge="fully-refunded")
    seeded.held[key] = None
    key = order()
    payment(key, captured="40.000")
    seeded.held[key] = d.AMOUNT_MISMATCH
    key = order(currency="EUR")
    payment(key)
    seeded.held[key] = d.CURRENCY_MISMATCH
    key = order()
    payment(key)
    payment(key)
    seeded.held[key] = d.DOUBLE_CHARGE
    key = order()
    payment(key, ago=PAID_JUST_NOW)
    seeded.held[key] = None
    for key in seeded.held:
        seeded.untouched[key] = {"charge_status": "none", "total_charged_amount": Decimal("0")}
    return seeded


# --- Spree / Solidus ------------------------------------------------------------------------
# core/db/migrate/20210914000000_spree_four_three.rb (create_table :spree_orders, :spree_payments).


def spree_tables() -> sa.MetaData:
    md = sa.MetaData()
    money = sa.Numeric(10, 2)
    sa.Table(
        "spree_orders",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("number", sa.String(32)),
        sa.Column("item_total", money, nullable=False, default=0),
        sa.Column("total", money, nullable=False, default=0),
        sa.Column("state", sa.String(255)),
        sa.Column("payment_total", money, default=0),
        sa.Column("shipment_state", sa.String(255)),
        sa.Column("payment_state", sa.String(255)),
        sa.Column("currency", sa.String(255)),
        sa.Column("completed_at", sa.DateTime),
        sa.Column("canceled_at", sa.DateTime),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    sa.Table(
        "spree_payments",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("amount", money, nullable=False, default=0),
        sa.Column("order_id", sa.Integer, index=True),
        sa.Column("state", sa.String(255)),
        sa.Column("response_code", sa.String(255)),
        sa.Column("number", sa.String(255)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    return md


def seed_spree(shop: Shop) -> Seeded:
    seeded = Seeded()

    def order(state="complete", payment_state="balance_due", canceled=False, total="25.00"):
        return shop.insert(
            "spree_orders",
            number="R1",
            item_total=Decimal(total),
            total=Decimal(total),
            state=state,
            payment_total=Decimal("0"),
            shipment_state="pending",
            payment_state=payment_state,
            currency="USD",
            completed_at=shop.at(120),
            canceled_at=shop.at(30) if canceled else None,
            created_at=shop.at(130),
            updated_at=shop.at(120),
        )

    def payment(order_id, state="completed", amount="25.00", ago=PAID_LONG_AGO):
        shop.insert(
            "spree_payments",
            order_id=order_id,
            amount=Decimal(amount),
            state=state,
            response_code="ch_x",
            created_at=shop.at(ago + 1),
            updated_at=shop.at(ago),
        )

    for _ in range(2):
        key = order()
        payment(key)
        seeded.flipped[key] = {"payment_state": "paid", "payment_total": Decimal("25.00")}
    for trap in (
        order(state="canceled", canceled=True),  # the checkout state and canceled_at say so
        order(canceled=True),  # canceled_at set, state not yet moved
        order(state="payment"),  # checkout not finished
        order(payment_state="void"),
    ):
        payment(trap)
        seeded.held[trap] = d.PAID_BUT_CLOSED
    key = order()
    payment(key, amount="10.00")  # a partial capture of the total
    seeded.held[key] = d.AMOUNT_MISMATCH
    key = order()
    payment(key)
    payment(key)
    seeded.held[key] = d.DOUBLE_CHARGE
    key = order()
    payment(key, state="void")  # voided (refunded before capture)
    seeded.held[key] = None
    key = order()
    payment(key, ago=PAID_JUST_NOW)
    seeded.held[key] = None
    for key in seeded.held:
        seeded.untouched[key] = {"payment_total": Decimal("0.00")}
    return seeded


# --- Sylius ---------------------------------------------------------------------------------
# src/Sylius/Bundle/CoreBundle/Migrations/Version20201208105207.php (CREATE TABLE sylius_order,
# sylius_payment): amounts are INT, states VARCHAR(255), currency_code VARCHAR(3).


def sylius_tables() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table(
        "sylius_order",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("number", sa.String(255)),
        sa.Column("state", sa.String(255), nullable=False),
        sa.Column("checkout_state", sa.String(255), nullable=False),
        sa.Column("payment_state", sa.String(255), nullable=False),
        sa.Column("shipping_state", sa.String(255), nullable=False),
        sa.Column("items_total", sa.Integer, nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("currency_code", sa.String(3), nullable=False),
        sa.Column("checkout_completed_at", sa.DateTime),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime),
    )
    sa.Table(
        "sylius_payment",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("order_id", sa.Integer, sa.ForeignKey("sylius_order.id"), nullable=False),
        sa.Column("currency_code", sa.String(3), nullable=False),
        sa.Column("amount", sa.Integer, nullable=False),
        sa.Column("state", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime),
    )
    return md


def seed_sylius(shop: Shop) -> Seeded:
    seeded = Seeded()

    def order(state="new", checkout="completed", shipping="ready", currency="EUR", total=4990):
        return shop.insert(
            "sylius_order",
            number="000001",
            state=state,
            checkout_state=checkout,
            payment_state="awaiting_payment",
            shipping_state=shipping,
            items_total=total,
            total=total,
            currency_code=currency,
            checkout_completed_at=shop.at(120),
            created_at=shop.at(130),
            updated_at=shop.at(120),
        )

    def payment(order_id, state="completed", amount=4990, currency="EUR", ago=PAID_LONG_AGO):
        shop.insert(
            "sylius_payment",
            order_id=order_id,
            currency_code=currency,
            amount=amount,
            state=state,
            created_at=shop.at(ago + 1),
            updated_at=shop.at(ago),
        )

    for _ in range(2):
        key = order()
        payment(key)
        seeded.flipped[key] = {"payment_state": "paid", "state": "new"}
    for trap in (
        order(state="cancelled", shipping="cancelled"),
        order(state="cart", checkout="cart"),  # a cart someone paid for: a human looks at it
    ):
        payment(trap)
        seeded.held[trap] = d.PAID_BUT_CLOSED
    key = order()
    payment(key, state="authorized")  # held on the card, not captured
    seeded.held[key] = None
    key = order()
    payment(key, amount=4000)
    seeded.held[key] = d.AMOUNT_MISMATCH
    key = order()
    payment(key, currency="USD")
    seeded.held[key] = d.CURRENCY_MISMATCH
    key = order()
    payment(key)
    payment(key, state="refunded")  # a refunded earlier attempt does not count
    payment(key)
    seeded.held[key] = d.DOUBLE_CHARGE
    key = order()
    payment(key, ago=PAID_JUST_NOW)
    seeded.held[key] = None
    for key in seeded.held:
        seeded.untouched[key] = {"payment_state": "awaiting_payment"}
    return seeded


# --- Bagisto ---------------------------------------------------------------------------------
# packages/Webkul/Sales/src/Database/Migrations/2018_09_27_113154_create_orders_table.php and
# 2021_03_11_212124_create_order_transactions_table.php (Laravel migrations; MySQL only).


def bagisto_tables() -> sa.MetaData:
    md = sa.MetaData()
    money = sa.Numeric(12, 4)
    sa.Table(
        "orders",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("increment_id", sa.String(255), nullable=False, unique=True),
        sa.Column("status", sa.String(255)),
        sa.Column("order_currency_code", sa.String(255)),
        sa.Column("grand_total", money),
        sa.Column("base_grand_total", money),
        sa.Column("grand_total_invoiced", money),
        sa.Column("base_grand_total_invoiced", money),
        sa.Column("customer_type", sa.String(255)),
        sa.Column("created_at", sa.DateTime),
        sa.Column("updated_at", sa.DateTime),
    )
    sa.Table(
        "order_transactions",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("transaction_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(255)),
        sa.Column("type", sa.String(255)),
        sa.Column("amount", money),
        sa.Column("payment_method", sa.String(255)),
        sa.Column("invoice_id", sa.Integer, nullable=False),
        sa.Column("order_id", sa.Integer, sa.ForeignKey("orders.id"), nullable=False),
        sa.Column("created_at", sa.DateTime),
        sa.Column("updated_at", sa.DateTime),
    )
    return md


def seed_bagisto(shop: Shop) -> Seeded:
    seeded = Seeded()
    numbers = iter(range(1, 100))

    def order(status="pending_payment", total="99.0000"):
        return shop.insert(
            "orders",
            increment_id=str(next(numbers)),
            status=status,
            order_currency_code="EUR",
            grand_total=Decimal(total),
            base_grand_total=Decimal(total),
            grand_total_invoiced=Decimal("0"),
            base_grand_total_invoiced=Decimal("0"),
            customer_type="Webkul\\Customer\\Models\\Customer",
            created_at=shop.at(120),
            updated_at=shop.at(120),
        )

    def payment(order_id, status="COMPLETED", amount="99.0000", ago=PAID_LONG_AGO):
        shop.insert(
            "order_transactions",
            transaction_id="8AB12345CD",
            status=status,
            type="CAPTURE",
            amount=Decimal(amount),
            payment_method="paypal_smart_button",
            invoice_id=0,
            order_id=order_id,
            created_at=shop.at(ago + 1),
            updated_at=shop.at(ago),
        )

    for status in ("pending_payment", "pending"):
        key = order(status)
        payment(key)
        seeded.flipped[key] = {
            "grand_total_invoiced": Decimal("99.0000"),
            "base_grand_total_invoiced": Decimal("99.0000"),
        }
    for status in ("canceled", "fraud"):
        key = order(status)
        payment(key)
        seeded.held[key] = d.PAID_BUT_CLOSED
    key = order()
    payment(key, amount="49.5000")  # half captured
    seeded.held[key] = d.AMOUNT_MISMATCH
    key = order()
    payment(key)
    payment(key)
    seeded.held[key] = d.DOUBLE_CHARGE
    key = order()
    payment(key, status="REFUNDED")
    seeded.held[key] = None
    key = order()
    payment(key, ago=PAID_JUST_NOW)
    seeded.held[key] = None
    for key in seeded.held:
        seeded.untouched[key] = {"grand_total_invoiced": Decimal("0.0000")}
    return seeded


# --- WooCommerce (HPOS) ------------------------------------------------------------------------
# plugins/woocommerce/src/Internal/DataStores/Orders/OrdersTableDataStore.php, get_database_schema():
# wp_wc_orders and wp_wc_order_operational_data (MySQL/MariaDB only).


def woocommerce_tables() -> sa.MetaData:
    md = sa.MetaData()
    money = sa.Numeric(26, 8)
    sa.Table(
        "wp_wc_orders",
        md,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("status", sa.String(20)),
        sa.Column("currency", sa.String(10)),
        sa.Column("type", sa.String(20)),
        sa.Column("tax_amount", money),
        sa.Column("total_amount", money),
        sa.Column("customer_id", sa.BigInteger),
        sa.Column("date_created_gmt", sa.DateTime),
        sa.Column("date_updated_gmt", sa.DateTime),
        sa.Column("parent_order_id", sa.BigInteger),
        sa.Column("payment_method", sa.String(100)),
        sa.Column("transaction_id", sa.String(100)),
    )
    sa.Table(
        "wp_wc_order_operational_data",
        md,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("order_id", sa.BigInteger, unique=True),
        sa.Column("created_via", sa.String(100)),
        sa.Column("order_key", sa.String(100)),
        sa.Column("date_paid_gmt", sa.DateTime),
        sa.Column("date_completed_gmt", sa.DateTime),
    )
    return md


def seed_woocommerce(shop: Shop) -> Seeded:
    seeded = Seeded()
    ids = iter(range(100, 200))

    def order(status="wc-pending", paid_ago=None, kind="shop_order", parent=None):
        key = next(ids)
        shop.insert(
            "wp_wc_orders",
            id=key,
            status=status,
            currency="EUR",
            type=kind,
            tax_amount=Decimal("0"),
            total_amount=Decimal("35.5"),
            customer_id=1,
            date_created_gmt=shop.at(120),
            date_updated_gmt=shop.at(120),
            parent_order_id=parent or 0,
            payment_method="stripe",
            transaction_id="pi_3" if paid_ago is not None else "",
        )
        shop.insert(
            "wp_wc_order_operational_data",
            order_id=key,
            created_via="checkout",
            order_key=f"wc_order_{key}",
            date_paid_gmt=None if paid_ago is None else shop.at(paid_ago),
        )
        return key

    for _ in range(2):
        seeded.flipped[order(paid_ago=PAID_LONG_AGO)] = {"status": "wc-processing"}
    seeded.held[order(status="wc-cancelled", paid_ago=PAID_LONG_AGO)] = d.PAID_BUT_CLOSED
    refunded = order(status="wc-refunded", paid_ago=PAID_LONG_AGO)
    seeded.held[refunded] = d.PAID_BUT_CLOSED
    # A refund is a row of the orders table with another type (pending here): never an order.
    seeded.held[order(paid_ago=PAID_LONG_AGO, kind="shop_order_refund", parent=refunded)] = (
        d.PAID_BUT_CLOSED
    )
    seeded.held[order()] = None  # not paid yet
    seeded.held[order(paid_ago=PAID_JUST_NOW)] = None
    for key in seeded.held:
        seeded.untouched[key] = {
            "transaction_id": shop.row("wp_wc_orders", key, "transaction_id")["transaction_id"]
        }
    return seeded


def without_guards(raw: dict) -> dict:
    return {k: v for k, v in raw.items() if k != "guards"}


def cancelled_as_pending(raw: dict) -> dict:
    """One status column, nothing to guard: the unsafe mistake is a closing status listed as pending."""
    pending = [*raw["statuses"]["order_pending"], "canceled"]
    return {
        **raw,
        "statuses": {**raw["statuses"], "order_pending": pending, "order_do_not_touch": []},
    }


SHOPS = {
    # name: (tables, seed, an unsafe variant of the recipe, how doctor's refusal of it begins;
    # a variant wrong in its words alone is refused as soon as the mapping is read)
    "saleor": (saleor_tables, seed_saleor, without_guards, "order_order.status holds"),
    "spree": (spree_tables, seed_spree, without_guards, "spree_orders.state holds"),
    "sylius": (sylius_tables, seed_sylius, without_guards, "sylius_order.state holds"),
    "woocommerce": (
        woocommerce_tables,
        seed_woocommerce,
        without_guards,
        "wp_wc_orders.type holds",
    ),
    "bagisto": (
        bagisto_tables,
        seed_bagisto,
        cancelled_as_pending,
        "order_pending 'canceled' reads as cancellation",
    ),
}
POSTGRESQL_ONLY = {"saleor"}
MARIADB_ONLY = {"bagisto", "woocommerce"}


@pytest.fixture(params=sorted(SHOPS))
def recipe_shop(request, server_engine) -> tuple[str, Shop, Seeded]:
    name = request.param
    if name in POSTGRESQL_ONLY and server_engine.dialect.name != "postgresql":
        pytest.skip(f"{name} supports PostgreSQL only")
    if name in MARIADB_ONLY and server_engine.dialect.name == "postgresql":
        pytest.skip(f"{name} supports MySQL and MariaDB only")
    tables, seed, _, _ = SHOPS[name]
    shop = Shop(server_engine, tables(), recipe(name))
    return name, shop, seed(shop)


def test_recipe_flips_every_orphan_once_and_reports_every_trap(recipe_shop):
    name, shop, seeded = recipe_shop
    s, m = shop.schema, shop.mapping
    with shop.engine.connect() as conn:
        report = inconsistency_report(conn, s, sample_size=None)
    for key, kind in seeded.held.items():
        found = {k for k, ids in report.order_ids.items() if key in ids}
        assert found == ({kind} if kind else set()), (name, key)

    with shop.engine.connect() as conn:
        listed = orphan_rows(conn, s, d.ScanWindow(now=utcnow()))
    assert {row.order_id for row in listed} == set(seeded.flipped)
    # One order at a time (the operator's `--order`), each trap as the run would decide it.
    regularizer = Regularizer(shop.engine, s, sleeper=no_sleep)
    for key, kind in seeded.held.items():
        outcome = regularizer.regularize_one(key, "operator", RunOptions(sleep=0))
        assert outcome.action == (INCONSISTENT if kind else SKIPPED), (key, outcome)
        assert outcome.reason.startswith(kind or ""), (key, outcome)

    first = Regularizer(shop.engine, s, sleeper=no_sleep).run(RunOptions(sleep=0))
    again = Regularizer(shop.engine, s, sleeper=no_sleep).run(RunOptions(sleep=0))

    assert first.regularized == len(seeded.flipped) and again.regularized == 0
    assert outbox_per_order(shop.engine) == {str(key): 1 for key in seeded.flipped}
    for key, expected in seeded.flipped.items():
        row = shop.row(m.orders.table, key, m.orders.status, *expected)
        assert row == {m.orders.status: m.statuses.order_completed, **expected}
        if m.orders.updated_at:
            stamp = shop.row(m.orders.table, key, m.orders.updated_at)[m.orders.updated_at]
            touched = s.read_time(stamp)
            assert touched >= shop.now - dt.timedelta(seconds=1)
    for key, kept in seeded.untouched.items():
        assert shop.row(m.orders.table, key, *kept) == kept


def test_doctor_passes_the_recipe_and_refuses_an_unsafe_variant(recipe_shop):
    name, shop, _ = recipe_shop
    _, _, unsafe_variant, refusal = SHOPS[name]
    with shop.engine.connect() as conn:
        safe = diagnose(conn, shop.schema, now=shop.now)
    assert safe.refusals == [], safe.lines()
    assert not [w for w in safe.warnings if "closed order" in w], safe.warnings
    assert safe.verdict.startswith("verdict: ready")
    try:
        unsafe_mapping = SchemaMapping.parse(unsafe_variant(shop.raw))
    except ConfigurationError as refused:  # doctor, a run and every command refuse it alike
        assert refusal in str(refused)
        return
    with shop.engine.connect() as conn:
        unsafe = diagnose(conn, bind_schema(shop.engine, unsafe_mapping), now=shop.now)
    assert any(r.startswith(refusal) for r in unsafe.refusals), unsafe.refusals
    assert unsafe.verdict.startswith("verdict: REFUSED")


def test_a_recipe_that_lists_an_authorization_as_completed_is_refused(server_engine):
    raw = recipe("sylius")
    raw["statuses"] = {**raw["statuses"], "transaction_completed": ["completed", "authorized"]}
    shop = Shop(server_engine, sylius_tables(), recipe("sylius"))
    seed_sylius(shop)
    # Refused when the mapping is read: by doctor, and by every run and operator command alike.
    with pytest.raises(ConfigurationError, match=r"'authorized' reads as held, not captured"):
        SchemaMapping.parse(raw)
    with shop.engine.connect() as conn:
        honest = diagnose(conn, shop.schema, now=shop.now)
    assert (
        "  note: 'authorized' reads as held, not captured: never list as completed"
        in (dict(honest.sections)["transaction statuses"])
    )


def test_every_recipe_is_tested_and_shown_whole_in_the_schema_docs():
    docs = (RECIPES.parents[1] / "schema.md").read_text(encoding="utf-8")
    files = sorted(path.stem for path in RECIPES.glob("*.yaml"))
    assert files == sorted(SHOPS)
    for name in files:
        assert (RECIPES / f"{name}.yaml").read_text(encoding="utf-8") in docs, name


def test_a_run_works_under_exactly_the_grants_doctor_prints(server_engine):
    """Spree's recipe repairs payment_total too: the printed grants must cover it, and no more."""
    import uuid

    from regularization_pipeline.core.operations.statements import grant_statements
    from regularization_pipeline.core.shop.engine import create_app_engine

    shop = Shop(server_engine, spree_tables(), recipe("spree"))
    seeded = seed_spree(shop)
    role = f"regpipe_{uuid.uuid4().hex[:10]}"
    with server_engine.connect() as conn:
        report = diagnose(conn, shop.schema, now=shop.now)
    printed = dict(report.sections)["statements for this mapping"]
    grants = grant_statements(shop.schema, server_engine.dialect.name, role)
    assert set(grant_statements(shop.schema, server_engine.dialect.name)) <= set(printed)
    assert any("UPDATE (" in g and "payment_total" in g for g in grants), grants
    pg = server_engine.dialect.name == "postgresql"
    with server_engine.begin() as conn:
        for statement in grants:
            conn.exec_driver_sql(statement.split("  --")[0].replace("%", "%%"))
    url = server_engine.url.set(username=role, password=None)
    restricted = create_app_engine(url.render_as_string(hide_password=False))
    try:
        schema = bind_schema(restricted, shop.mapping)
        summary = Regularizer(restricted, schema, sleeper=no_sleep).run(RunOptions(sleep=0))
        assert summary.regularized == len(seeded.flipped)
        with pytest.raises(sa.exc.DBAPIError):  # a column the flip never writes stays refused
            with restricted.begin() as conn:
                conn.execute(sa.text("UPDATE spree_orders SET total = 0"))
    finally:
        restricted.dispose()
        with server_engine.begin() as conn:
            if pg:
                conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
                conn.exec_driver_sql(f'DROP ROLE "{role}"')
            else:
                conn.exec_driver_sql(f"DROP USER '{role}'@'%%'")
    assert outbox_per_order(server_engine) == {str(key): 1 for key in seeded.flipped}
