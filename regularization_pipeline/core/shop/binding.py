"""The mapping bound to a live database: SQLAlchemy columns for every mapped name, checked
against the database before anything is read or written (:func:`bind_schema`), so a typo in a
column name fails at start with the name in the message instead of half-way through a run."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from regularization_pipeline.core.clock import from_shop, shop_zone, to_shop
from regularization_pipeline.core.exceptions import SchemaMismatchError
from regularization_pipeline.core.shop.guards import order_guard_conditions
from regularization_pipeline.core.shop.mapping import (
    CurrencyTableMapping,
    SchemaMapping,
    StatusMapping,
    mapped_columns,
)

# An operator's order id for an integer key: ASCII digits, no sign, no padding, no leading zero,
# up to the largest 64-bit key (BIGINT), so every real id is found and nothing else resembles one.
_WHOLE_NUMBER = re.compile(r"0|[1-9][0-9]{0,18}")


_LARGEST_KEY = 2**63 - 1


_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class AppSchema:
    """The mapping bound to a database: SQLAlchemy columns for every mapped name.

    ``tx_completed_at`` is the column that dates a payment: ``completed_at``
    when the application has one, ``updated_at`` otherwise. ``aware_columns``
    holds the ``(table, column)`` pairs whose type keeps a zone (``timestamptz``):
    they are bound as aware UTC, every other time column as wall time in the
    mapping's ``timezone``.
    """

    mapping: SchemaMapping
    orders: sa.TableClause
    transactions: sa.TableClause
    # The type of the orders' key as the database declares it: "integer", "uuid" or "text".
    order_key_type: str = "text"
    aware_columns: frozenset[tuple[str, str]] = frozenset()
    # False when a currency column is not text (an integer id into a currency table):
    # currencies are then compared as they are, never through upper().
    currency_is_text: bool = True
    # The currency columns holding an id that is read as its code through ``mapping.currencies``.
    currency_ids: frozenset[str] = frozenset()

    def parse_order_id(self, text: str):
        """An operator's order id as a value of the orders' key, or None when it cannot be one.

        Parsed before any query: MySQL-family servers compare a string with an integer
        key as a number, so '1O', '1,2' or '1 OR 1=1' would otherwise find order 1.
        Exact: no surrounding or Unicode whitespace, no padding, no leading zeros, no other
        spelling of a UUID; ``' 1'``, ``'1\\n'`` or ``'01'`` name no order.
        """
        if self.order_key_type == "integer":
            if not _WHOLE_NUMBER.fullmatch(text) or int(text) > _LARGEST_KEY:
                return None
            return int(text)
        if self.order_key_type == "uuid":
            return str(uuid.UUID(text)) if _CANONICAL_UUID.fullmatch(text) else None
        return text if text and text == text.strip() and text.isprintable() else None

    def read_time(self, value) -> dt.datetime | None:
        """A time read from the shop's tables, as naive UTC (see :func:`clock.from_shop`)."""
        return from_shop(value, shop_zone(self.mapping.timezone))

    def shop_time(self, column: sa.ColumnClause, value: dt.datetime) -> dt.datetime:
        """Naive UTC ``value`` as ``column`` stores times, to bind into a statement on it."""
        aware = (column.table.name, column.name) in self.aware_columns
        return to_shop(value, shop_zone(self.mapping.timezone), aware=aware)

    @property
    def statuses(self) -> StatusMapping:
        return self.mapping.statuses

    def o(self, field: str) -> sa.ColumnClause:
        return self.orders.c[getattr(self.mapping.orders, field)]

    def t(self, field: str) -> sa.ColumnClause:
        if self.mapping.payments_are_derived:  # derived rows name their columns by field
            return self.transactions.c[field]
        return self.transactions.c[getattr(self.mapping.transactions, field)]

    def has_o(self, field: str) -> bool:
        return getattr(self.mapping.orders, field) is not None

    def has_t(self, field: str) -> bool:
        if field in ("status", "amount") and self.mapping.payments_are_derived:
            return True  # computed: from the completion column, from the order's total
        return getattr(self.mapping.transactions, field) is not None

    def currency(self, side: str) -> sa.ColumnElement:
        """The currency of the order (``"o"``) or the payment (``"t"``), as a code when the
        column holds an id into the mapping's currencies table."""
        column = self.o("currency") if side == "o" else self.t("currency")
        table = self.mapping.currencies
        if table is None or side not in self.currency_ids:
            return column
        codes = sa.table(table.table, sa.column(table.id), sa.column(table.code)).alias(
            f"currency_of_{side}"
        )
        # The order or payment comes from whichever query encloses it, however deep.
        lookup = sa.select(codes.c[table.code]).where(codes.c[table.id] == column)
        return lookup.correlate_except(codes).scalar_subquery()

    @property
    def tx_completed_at(self) -> sa.ColumnClause:
        return self.t("completed_at") if self.has_t("completed_at") else self.t("updated_at")


def build_schema(
    mapping: SchemaMapping, aware_columns: frozenset[tuple[str, str]] = frozenset()
) -> AppSchema:
    """Table clauses for the mapped names, without touching a database."""
    orders = sa.table(mapping.orders.table, *(sa.column(c) for c in mapping.order_columns))
    t = mapping.transactions
    if not mapping.payments_are_derived:
        transactions = sa.table(t.table, *(sa.column(c) for c in mapped_columns(t)))
    else:
        transactions = _payment_rows(mapping)
        # The derived rows keep the zone of the payments' own columns.
        aware_columns = aware_columns | {
            (transactions.name, field)
            for field, name in t.model_dump().items()
            if (t.table, name) in aware_columns
        }
    return AppSchema(
        mapping=mapping, orders=orders, transactions=transactions, aware_columns=aware_columns
    )


def _payment_rows(mapping: SchemaMapping) -> sa.Subquery:
    """The payments as derived rows, one per (order, payment), columns named by field.

    Every query reads them as it reads a payments table with an order column. Through a
    link table, a payment linked to two orders counts for each (and pays the total of
    neither: held), and an order linked to two completed payments is a double charge. A
    completion column makes a row completed when set (its status reads as the first
    completed status); an amount left null is the order's total; ``only`` keeps the rows
    that are payments (a type column shared with refunds, a key of a key/value table).
    """
    t, links, rows = mapping.transactions, mapping.payment_links, mapping.payment_rows
    names = [v for k, v in t.model_dump().items() if k != "table" and v is not None]
    names += [c for c in rows.columns if c not in names]
    payments = sa.table(t.table, *(sa.column(c) for c in names))
    if links is None:
        order_key, source = payments.c[t.order_id], payments
    else:
        link = sa.table(links.table, sa.column(links.order_id), sa.column(links.payment_id))
        order_key = link.c[links.order_id]
        source = payments.join(link, link.c[links.payment_id] == payments.c[t.id])
    o = mapping.orders
    orders = sa.table(o.table, sa.column(o.id), sa.column(o.total)).alias("order_of_payment")
    completed = mapping.statuses.transaction_completed
    is_set = payments.c[rows.completed_when_set].is_not(None) if rows.completed_when_set else None
    if t.status is None:
        status = sa.case((is_set, completed[0]), else_=sa.null())
    elif is_set is not None:
        status = sa.case((is_set, completed[0]), else_=payments.c[t.status])
    else:
        status = payments.c[t.status]
    amount = payments.c[t.amount] if t.amount else orders.c[o.total]
    columns = [order_key.label("order_id"), payments.c[t.id].label("id")]
    columns += [status.label("status"), amount.label("amount")]
    for field in ("currency", "completed_at", "updated_at", "reference"):
        name = getattr(t, field)
        if name is not None:
            columns.append(payments.c[name].label(field))
    if not t.amount:
        source = source.join(orders, orders.c[o.id] == order_key)
    query = sa.select(*columns).select_from(source)
    query = query.where(*(c.matches(payments.c[c.column]) for c in rows.only))
    return query.subquery(f"{t.table}_by_order")


def _key_type(column_type: sa.types.TypeEngine) -> str:
    if isinstance(column_type, sa.Integer):
        return "integer"
    if isinstance(column_type, sa.Uuid) or type(column_type).__name__.upper() == "UUID":
        return "uuid"
    return "text"


def bind_schema(engine: sa.Engine, mapping: SchemaMapping) -> AppSchema:
    """Check that every mapped table and column exists, then build the clauses.

    Raises :class:`SchemaMismatchError` naming the first missing table or the
    missing columns, before anything is read from or written to those tables.
    """
    inspector = sa.inspect(engine)
    key_type = "text"
    currency_ids: set[str] = set()
    aware: set[tuple[str, str]] = set()
    for section in (mapping.orders, mapping.transactions):
        if not inspector.has_table(section.table):
            raise SchemaMismatchError(
                f"table {section.table!r} named in the schema mapping does not exist in the database"
            )
        columns = inspector.get_columns(section.table)
        present = {col["name"] for col in columns}
        if section is mapping.orders:
            key = [col for col in columns if col["name"].lower() == mapping.orders.id.lower()]
            key_type = _key_type(key[0]["type"]) if key else "text"
        currency = [
            c for c in columns if section.currency and c["name"].lower() == section.currency.lower()
        ]
        if currency and not isinstance(currency[0]["type"], sa.String):
            currency_ids.add("o" if section is mapping.orders else "t")
        aware.update(
            (section.table, col["name"])
            for col in columns
            if getattr(col["type"], "timezone", False) is True
        )
        missing = _missing_columns(engine, mapping, section, present)
        if missing:
            raise SchemaMismatchError(
                f"table {section.table!r} lacks column(s) {', '.join(repr(m) for m in missing)} "
                f"named in the schema mapping"
            )
    if mapping.payment_links is not None:
        links = mapping.payment_links
        _check_table(inspector, links.table, [links.order_id, links.payment_id])
    translated, currency_is_text = _currency_reading(inspector, mapping, currency_ids)
    return dataclasses.replace(
        build_schema(mapping, frozenset(aware)),
        order_key_type=key_type,
        currency_is_text=currency_is_text,
        currency_ids=translated,
    )


def _missing_columns(
    engine: sa.Engine, mapping: SchemaMapping, section: Any, present: set[str]
) -> list[str]:
    """The columns the mapping names in ``section``'s table that the table lacks."""
    present_lower = {name.lower() for name in present}
    named = mapping.order_columns if section is mapping.orders else mapped_columns(section)
    if section is mapping.transactions:
        if mapping.payment_links is not None:
            named = [c for c in named if c != section.order_id]  # the link table has it
        named += [c for c in mapping.payment_rows.columns if c not in named]
    return [
        c
        for c in named
        # MySQL and SQLite compare column names case-insensitively.
        if c not in present
        and (engine.dialect.name == "postgresql" or c.lower() not in present_lower)
    ]


def _currency_reading(
    inspector, mapping: SchemaMapping, currency_ids: set[str]
) -> tuple[frozenset[str], bool]:
    """(the sides whose currency ids are translated to codes, whether currencies are text)."""
    both = mapping.orders.currency is not None and mapping.transactions.currency is not None
    if mapping.currencies is not None:
        _check_currency_table(inspector, mapping.currencies)
        return frozenset(currency_ids), True
    if both and len(currency_ids) == 1:
        raise SchemaMismatchError(
            "one currency column holds an id and the other a code: name the currency "
            "table under `currencies` in the schema mapping, so ids are read as codes"
        )
    return frozenset(), not currency_ids


def _check_currency_table(inspector, table: CurrencyTableMapping) -> None:
    _check_table(inspector, table.table, [table.id, table.code])


def _check_table(inspector, name: str, columns: list[str]) -> None:
    """The table exists and has ``columns`` (compared case-insensitively), or SchemaMismatchError."""
    if not inspector.has_table(name):
        raise SchemaMismatchError(
            f"table {name!r} named in the schema mapping does not exist in the database"
        )
    present = {col["name"].lower() for col in inspector.get_columns(name)}
    missing = [c for c in columns if c.lower() not in present]
    if missing:
        raise SchemaMismatchError(
            f"table {name!r} lacks column(s) {', '.join(repr(m) for m in missing)} "
            "named in the schema mapping"
        )


# --- what may be flipped: shared by the orphan scans, the batch claim and the flip ----------


def order_is_live(s: AppSchema) -> list[sa.ColumnElement[bool]]:
    return [s.o("deleted_at").is_(None)] if s.has_o("deleted_at") else []


def order_in_pending_status(s: AppSchema) -> list[sa.ColumnElement[bool]]:
    """Pending by its status column and live, whatever the guards say."""
    return [s.o("status").in_(s.statuses.order_pending), *order_is_live(s)]


def order_is_pending(s: AppSchema) -> list[sa.ColumnElement[bool]]:
    """An order the pipeline may flip: pending, live, and let through by every guard of the mapping.

    Every orphan, fixable and regularizable condition, the batch claim and the flip's
    compare-and-set are built on it, so a guard holds everywhere an order is chosen or moved.
    """
    return [*order_in_pending_status(s), *order_guard_conditions(s)]
