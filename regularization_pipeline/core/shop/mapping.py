"""The mapping of the application's tables, columns and status values.

The orders and transactions tables belong to the application, not to us, so
every name the pipeline uses comes from a :class:`SchemaMapping`. Its defaults
follow Laravel conventions; a YAML file named by ``REGULARIZATION_SCHEMA_FILE``
overrides any part of it. :func:`bind_schema` checks the mapping against the
live database before anything is read or written, so a typo in a column name
fails at start with the name in the message instead of half-way through a run.

Beyond the two tables' columns a mapping can name guards and repairs (other
columns of the orders table, :mod:`~regularization_pipeline.core.shop.guards`),
a link table between orders and payments, payments recorded as data, and a
currency table: the payments are then read as derived rows (one per order and
payment, columns named by field) so every query keeps its one shape.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from regularization_pipeline.core.clock import from_shop, shop_zone, to_shop
from regularization_pipeline.core.config_files import read_yaml_mapping, validate_or_explain
from regularization_pipeline.core.errors import SchemaMismatchError
from regularization_pipeline.core.shop.guards import (
    ColumnCondition,
    OrderGuards,
    Repair,
    check_repairs,
)
from regularization_pipeline.core.shop.identifiers import check_identifier
from regularization_pipeline.core.shop.mapping_rules import status_problems

SCHEMA_FILE_ENV = "REGULARIZATION_SCHEMA_FILE"

# An operator's order id for an integer key: ASCII digits, no sign, no padding, no leading zero,
# up to the largest 64-bit key (BIGINT), so every real id is found and nothing else resembles one.
_WHOLE_NUMBER = re.compile(r"0|[1-9][0-9]{0,18}")
_LARGEST_KEY = 2**63 - 1
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _TableSection(_Strict):
    """A table and its columns: every value must be a plain SQL identifier."""

    @field_validator("*")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        return check_identifier(value)


class OrdersMapping(_TableSection):
    """Where the application keeps its orders."""

    table: str = Field("orders", description="Orders table name.")
    id: str = Field("id", description="Primary key column.")
    status: str = Field("status", description="Order status column.")
    total: str = Field("total", description="Order total amount column.")
    currency: str | None = Field(
        "currency", description="Currency column, or null if orders have none."
    )
    created_at: str = Field("created_at", description="Creation timestamp column.")
    updated_at: str | None = Field(
        "updated_at", description="Column set to now when the order is flipped, or null."
    )
    deleted_at: str | None = Field(
        "deleted_at", description="Soft-delete column (Laravel SoftDeletes), or null."
    )


class TransactionsMapping(_TableSection):
    """Where the application keeps its payment transactions."""

    table: str = Field("transactions", description="Transactions table name.")
    id: str = Field("id", description="Primary key column.")
    order_id: str = Field("order_id", description="Foreign key to the order.")
    status: str | None = Field(
        "status",
        description="Transaction status column; null when payment_rows.completed_when_set says it.",
    )
    amount: str | None = Field(
        "amount", description="Amount charged; null when the amount is the order's total."
    )
    currency: str | None = Field("currency", description="Currency column, or null.")
    completed_at: str | None = Field(
        "completed_at",
        description="When the payment completed; null to use updated_at instead.",
    )
    updated_at: str = Field("updated_at", description="Last update timestamp column.")
    reference: str | None = Field(
        None,
        description="The provider's reference for the payment (used by provider verification).",
    )


class CurrencyTableMapping(_TableSection):
    """The shop's table of currencies, for a currency column that holds an id into it."""

    table: str = Field(description="Currencies table name.")
    id: str = Field("id", description="Its key, the value the currency columns hold.")
    code: str = Field("code", description="The currency's code (EUR, USD...).")


class PaymentLinksMapping(_TableSection):
    """A many-to-many table between orders and payments, when payments carry no order id."""

    table: str = Field(description="Link table name.")
    order_id: str = Field("order_id", description="Its column holding the order's key.")
    payment_id: str = Field("payment_id", description="Its column holding the payment's key.")


class PaymentRowsMapping(_Strict):
    """Payments recorded as data: completion as a column that is set, rows chosen by a column."""

    completed_when_set: str | None = Field(
        None,
        description=(
            "A column of the payments table (a paid date, a transaction id): a row with it set "
            "is a completed payment, as is one whose status is listed as completed."
        ),
    )
    only: tuple[ColumnCondition, ...] = Field(
        (),
        description="Conditions on the payments table's columns choosing the rows that are payments.",
    )

    @field_validator("completed_when_set")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return check_identifier(value)

    @property
    def columns(self) -> list[str]:
        return [*([self.completed_when_set] if self.completed_when_set else [])] + [
            c.column for c in self.only
        ]


class StatusMapping(_Strict):
    """Which status values mean what. Values are compared exactly: case matters.

    Validated by :func:`~regularization_pipeline.core.shop.mapping_rules.status_problems`:
    lists that contradict each other or words that mean the opposite are refused.
    """

    order_pending: tuple[str, ...] = Field(
        ("pending",), min_length=1, description="Order statuses that mean 'waiting for payment'."
    )
    order_completed: str = Field(
        "completed", min_length=1, description="The status written when an order is regularized."
    )
    order_do_not_touch: tuple[str, ...] = Field(
        ("cancelled", "canceled", "failed", "refunded"),
        description=(
            "Order statuses that must never be flipped; a completed payment on one is reported "
            "(both spellings of cancelled by default)."
        ),
    )
    transaction_completed: tuple[str, ...] = Field(
        ("completed",),
        min_length=1,
        description="Transaction statuses that mean the payment went through.",
    )

    @model_validator(mode="after")
    def _sound(self) -> StatusMapping:
        problems = status_problems(
            self.order_pending,
            self.order_completed,
            self.order_do_not_touch,
            self.transaction_completed,
        )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class SchemaMapping(_Strict):
    """The whole mapping: the application's two tables, its statuses, and our table prefix."""

    orders: OrdersMapping = OrdersMapping()
    transactions: TransactionsMapping = TransactionsMapping()
    statuses: StatusMapping = StatusMapping()
    table_prefix: str = Field(
        "regularization_",
        pattern=r"^[a-z_][a-z0-9_]{0,30}$",
        description="Prefix of the tables this project owns, so they never collide with the application's.",
    )
    timezone: str = Field(
        "UTC",
        description=(
            "IANA zone of the shop's naive timestamp columns (Laravel's APP_TIMEZONE); "
            "columns with a zone (PostgreSQL timestamptz) are read as they are."
        ),
    )
    currencies: CurrencyTableMapping | None = Field(
        None,
        description=(
            "The table a currency id (an integer currency column) points into; its code is "
            "compared with the other side's code. Null: ids are compared as they are."
        ),
    )
    payment_links: PaymentLinksMapping | None = Field(
        None,
        description=(
            "The link table between orders and payments (many-to-many); transactions.order_id "
            "then names no column of the payments table."
        ),
    )
    payment_rows: PaymentRowsMapping = Field(
        PaymentRowsMapping(),
        description="Payments recorded as data rather than as a status word (see docs/schema.md).",
    )
    guards: OrderGuards = Field(
        OrderGuards(),
        description="Conditions on other columns of the orders table (see docs/schema.md).",
    )
    repairs: dict[str, Repair] = Field(
        {},
        description="Other columns of the orders table the flip sets, by column name.",
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        shop_zone(value)
        return value

    @model_validator(mode="after")
    def _repairs(self) -> SchemaMapping:
        o = self.orders
        check_repairs(self.repairs, o.status, o.updated_at, o.id)
        if self.transactions.status is None and self.payment_rows.completed_when_set is None:
            raise ValueError(
                "transactions.status is null: name payment_rows.completed_when_set, the column "
                "whose value says a payment completed"
            )
        return self

    @property
    def payments_are_derived(self) -> bool:
        """Whether payments are read as derived rows rather than straight from their table."""
        t, rows = self.transactions, self.payment_rows
        return bool(
            self.payment_links
            or rows.completed_when_set
            or rows.only
            or not t.status
            or not t.amount
        )

    @property
    def order_columns(self) -> list[str]:
        """Every column of the orders table the mapping names: mapped, guarded, repaired, copied."""
        names = _mapped_columns(self.orders) + self.guards.columns
        for column, repair in self.repairs.items():
            names += [column] + ([repair.copy_from] if repair.copy_from else [])
        return list(dict.fromkeys(names))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> SchemaMapping:
        """Load a mapping from a YAML file; missing keys keep their Laravel defaults."""
        return cls.parse(read_yaml_mapping(path, "schema mapping file"), source=str(path))

    @classmethod
    def parse(cls, raw: dict, source: str = "schema mapping") -> SchemaMapping:
        """Validate a plain dict, turning pydantic's errors into one readable message."""
        return validate_or_explain(cls, raw, source)


def load_mapping(path: str | None = None) -> SchemaMapping:
    """The mapping from ``path``, else from ``$REGULARIZATION_SCHEMA_FILE``, else Laravel defaults."""
    path = path or os.environ.get(SCHEMA_FILE_ENV) or None
    return SchemaMapping.from_yaml(path) if path else SchemaMapping()


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


def _mapped_columns(section: BaseModel) -> list[str]:
    """The column names a table section maps, leaving out the optional ones set to null."""
    return [v for k, v in section.model_dump().items() if k != "table" and v is not None]


def build_schema(
    mapping: SchemaMapping, aware_columns: frozenset[tuple[str, str]] = frozenset()
) -> AppSchema:
    """Table clauses for the mapped names, without touching a database."""
    orders = sa.table(mapping.orders.table, *(sa.column(c) for c in mapping.order_columns))
    t = mapping.transactions
    if not mapping.payments_are_derived:
        transactions = sa.table(t.table, *(sa.column(c) for c in _mapped_columns(t)))
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
        present_lower = {name.lower() for name in present}
        named = mapping.order_columns if section is mapping.orders else _mapped_columns(section)
        if section is mapping.transactions:
            if mapping.payment_links is not None:
                named = [c for c in named if c != section.order_id]  # the link table has it
            named += [c for c in mapping.payment_rows.columns if c not in named]
        missing = [
            c
            for c in named
            # MySQL and SQLite compare column names case-insensitively.
            if c not in present
            and (engine.dialect.name == "postgresql" or c.lower() not in present_lower)
        ]
        if missing:
            raise SchemaMismatchError(
                f"table {section.table!r} lacks column(s) {', '.join(repr(m) for m in missing)} "
                f"named in the schema mapping"
            )
    if mapping.payment_links is not None:
        links = mapping.payment_links
        _check_table(inspector, links.table, [links.order_id, links.payment_id])
    both = mapping.orders.currency is not None and mapping.transactions.currency is not None
    if mapping.currencies is not None:
        _check_currency_table(inspector, mapping.currencies)
        translated, currency_is_text = frozenset(currency_ids), True
    else:
        translated, currency_is_text = frozenset(), not currency_ids
        if both and len(currency_ids) == 1:
            raise SchemaMismatchError(
                "one currency column holds an id and the other a code: name the currency "
                "table under `currencies` in the schema mapping, so ids are read as codes"
            )
    return dataclasses.replace(
        build_schema(mapping, frozenset(aware)),
        order_key_type=key_type,
        currency_is_text=currency_is_text,
        currency_ids=translated,
    )


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
