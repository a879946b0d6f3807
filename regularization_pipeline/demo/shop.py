"""A small shop database shaped like a Laravel application's, for the demo and the tests.

``shop_tables(mapping)`` builds the application's ``orders`` and
``transactions`` tables under any schema mapping (so the tests can prove a
shop with other table, column and status names works end to end), and
``ShopWriter`` inserts orders and payments in the states the pipeline meets in
production: healthy, orphaned, within the grace period, inconsistent and
soft-deleted.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from regularization_pipeline.core.clock import shop_zone, to_shop, utcnow
from regularization_pipeline.core.shop.mapping import SchemaMapping


@dataclass(frozen=True)
class ShopTables:
    metadata: sa.MetaData
    orders: sa.Table
    transactions: sa.Table
    customers: sa.Table


def shop_tables(
    mapping: SchemaMapping | None = None,
    *,
    with_indexes: bool = True,
    time_type: sa.types.TypeEngine | None = None,
) -> ShopTables:
    """The application's tables, named as ``mapping`` says, with the indexes docs/schema.md recommends.

    ``time_type`` is the type of every timestamp column (``DateTime``, Laravel's choice, by default).
    """
    m = mapping or SchemaMapping()
    stamp = time_type if time_type is not None else sa.DateTime()
    o, t = m.orders, m.transactions
    md = sa.MetaData()
    customers = sa.Table(
        "customers",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(120)),
        sa.Column("email", sa.String(200)),
    )
    ocols = [
        sa.Column(
            o.id,
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("customer_id", sa.Integer),
        sa.Column(o.status, sa.String(32), nullable=False),
        sa.Column(o.total, sa.Numeric(12, 2)),
        sa.Column(o.created_at, stamp, nullable=False),
    ]
    if o.currency:
        ocols.append(sa.Column(o.currency, sa.String(3)))
    if o.updated_at:
        ocols.append(sa.Column(o.updated_at, stamp))
    if o.deleted_at:
        ocols.append(sa.Column(o.deleted_at, stamp))
    orders = sa.Table(o.table, md, *ocols)
    transactions = sa.Table(t.table, md, *_transaction_columns(m, stamp))
    if with_indexes:
        _recommended_indexes(m, orders, transactions)
    return ShopTables(md, orders, transactions, customers)


def _transaction_columns(m: SchemaMapping, stamp: sa.types.TypeEngine) -> list[sa.Column]:
    t = m.transactions
    tcols = [
        sa.Column(
            t.id,
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column(t.order_id, sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False),
        sa.Column(t.status, sa.String(32), nullable=False),
        sa.Column(t.amount, sa.Numeric(12, 2)),
        sa.Column(t.updated_at, stamp, nullable=False),
        sa.Column("card_last4", sa.String(4)),
    ]
    if t.currency:
        tcols.append(sa.Column(t.currency, sa.String(3)))
    if t.completed_at:
        tcols.append(sa.Column(t.completed_at, stamp))
    if t.reference:
        tcols.append(sa.Column(t.reference, sa.String(64)))
    return tcols


def _recommended_indexes(m: SchemaMapping, orders: sa.Table, transactions: sa.Table) -> None:
    """What docs/schema.md recommends: pending orders by status then id (the candidate
    scan), transactions by order then status (every EXISTS), and completed payments by
    time (a lookback or since/until window)."""
    o, t = m.orders, m.transactions
    sa.Index(f"ix_{o.table}_status_id", orders.c[o.status], orders.c[o.id])
    sa.Index(f"ix_{t.table}_order_status", transactions.c[t.order_id], transactions.c[t.status])
    paid_at = transactions.c[t.completed_at or t.updated_at]
    sa.Index(f"ix_{t.table}_status_paid_at", transactions.c[t.status], paid_at)


@dataclass
class ShopWriter:
    """Inserts orders and payments; every helper returns the new order's id."""

    engine: sa.Engine
    mapping: SchemaMapping = field(default_factory=SchemaMapping)
    now: dt.datetime = field(default_factory=utcnow)
    rng: random.Random = field(default_factory=lambda: random.Random(7))  # noqa: S311 - demo data
    time_type: sa.types.TypeEngine | None = None

    def __post_init__(self) -> None:
        self.tables = shop_tables(self.mapping, time_type=self.time_type)

    def at(self, value: dt.datetime) -> dt.datetime:
        """Naive UTC ``value`` as the application writes it: in its zone, aware only in a timestamptz."""
        aware = getattr(self.time_type, "timezone", False) is True
        return to_shop(value, shop_zone(self.mapping.timezone), aware=aware)

    def create(self) -> ShopWriter:
        self.tables.metadata.create_all(self.engine)
        return self

    def order(
        self,
        *,
        status: str | None = None,
        total: Any = "49.90",
        currency: str = "EUR",
        age_minutes: float = 120,
        deleted: bool = False,
        customer_id: int | None = None,
    ) -> Any:
        m = self.mapping.orders
        created = self.at(self.now - dt.timedelta(minutes=age_minutes + 5))
        values = {
            m.status: status or self.mapping.statuses.order_pending[0],
            m.total: total,
            m.created_at: created,
            "customer_id": customer_id,
        }
        if m.currency:
            values[m.currency] = currency
        if m.updated_at:
            values[m.updated_at] = created
        if m.deleted_at:
            values[m.deleted_at] = self.at(self.now) if deleted else None
        with self.engine.begin() as conn:
            return conn.execute(self.tables.orders.insert().values(values)).inserted_primary_key[0]

    def payment(
        self,
        order_id: Any,
        *,
        status: str | None = None,
        amount: Any = "49.90",
        currency: str = "EUR",
        completed_minutes_ago: float | None = 60,
    ) -> Any:
        t = self.mapping.transactions
        when = self.at(self.now - dt.timedelta(minutes=completed_minutes_ago or 0))
        values = {
            t.order_id: order_id,
            t.status: status or self.mapping.statuses.transaction_completed[0],
            t.amount: amount,
            t.updated_at: when,
            "card_last4": "4242",
        }
        if t.currency:
            values[t.currency] = currency
        if t.completed_at:
            values[t.completed_at] = when if completed_minutes_ago is not None else None
        if t.reference:
            values[t.reference] = f"pay_{self.rng.randrange(10**12):012d}"
        with self.engine.begin() as conn:
            return conn.execute(
                self.tables.transactions.insert().values(values)
            ).inserted_primary_key[0]

    def orphan(
        self,
        *,
        amount: Any = "49.90",
        currency: str = "EUR",
        paid_minutes_ago: float = 60,
        **order_kw,
    ) -> Any:
        """A pending order whose payment completed but whose webhook never arrived."""
        order_id = self.order(
            total=amount, currency=currency, age_minutes=paid_minutes_ago, **order_kw
        )
        self.payment(
            order_id, amount=amount, currency=currency, completed_minutes_ago=paid_minutes_ago
        )
        return order_id

    def orphans(self, count: int, **kw) -> list:
        """Many orphans with one multi-row insert per table (fast enough for thousands)."""
        m, t = self.mapping.orders, self.mapping.transactions
        paid = self.at(self.now - dt.timedelta(minutes=kw.get("paid_minutes_ago", 60)))
        amount = kw.get("amount", "49.90")
        rows = []
        for _ in range(count):
            row = {
                m.status: self.mapping.statuses.order_pending[0],
                m.total: amount,
                m.created_at: paid,
                "customer_id": None,
            }
            if m.currency:
                row[m.currency] = "EUR"
            if m.updated_at:
                row[m.updated_at] = paid
            if m.deleted_at:
                row[m.deleted_at] = None
            rows.append(row)
        with self.engine.begin() as conn:
            before = conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(self.tables.orders.c[m.id]), 0))
            ).scalar_one()
            conn.execute(self.tables.orders.insert(), rows)
            ids = list(
                conn.execute(
                    sa.select(self.tables.orders.c[m.id])
                    .where(self.tables.orders.c[m.id] > before)
                    .order_by(self.tables.orders.c[m.id])
                ).scalars()
            )
            txs = []
            for oid in ids:
                tx = {
                    t.order_id: oid,
                    t.status: self.mapping.statuses.transaction_completed[0],
                    t.amount: amount,
                    t.updated_at: paid,
                    "card_last4": "4242",
                }
                if t.currency:
                    tx[t.currency] = "EUR"
                if t.completed_at:
                    tx[t.completed_at] = paid
                if t.reference:
                    tx[t.reference] = f"pay_{oid}"
                txs.append(tx)
            conn.execute(self.tables.transactions.insert(), txs)
        return ids

    def status_of(self, order_id: Any) -> str:
        m = self.mapping.orders
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(self.tables.orders.c[m.status]).where(
                    self.tables.orders.c[m.id] == order_id
                )
            ).scalar_one()
