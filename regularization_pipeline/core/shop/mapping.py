"""The mapping of the application's tables, columns and status values.

The orders and transactions tables belong to the application, not to us, so
every name the pipeline uses comes from a :class:`SchemaMapping`. Its defaults
follow Laravel conventions; a YAML file named by ``REGULARIZATION_SCHEMA_FILE``
overrides any part of it. :func:`bind_schema` checks the mapping against the
live database before anything is read or written, so a typo in a column name
fails at start with the name in the message instead of half-way through a run.
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
from regularization_pipeline.core.shop.mapping_rules import status_problems

SCHEMA_FILE_ENV = "REGULARIZATION_SCHEMA_FILE"

# Identifiers end up quoted by SQLAlchemy, but a mapping is operator input: keep
# it to what real schemas use so a stray quote or semicolon is refused early.
# An operator's order id for an integer key: ASCII digits, no sign, no padding, no leading zero,
# up to the largest 64-bit key (BIGINT), so every real id is found and nothing else resembles one.
_WHOLE_NUMBER = re.compile(r"0|[1-9][0-9]{0,18}")
_LARGEST_KEY = 2**63 - 1
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def _check_identifier(value: str | None) -> str | None:
    if value is not None and not _IDENTIFIER.fullmatch(
        value
    ):  # match() and $ let a trailing newline by
        raise ValueError(f"{value!r} is not a valid table or column name")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _TableSection(_Strict):
    """A table and its columns: every value must be a plain SQL identifier."""

    @field_validator("*")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        return _check_identifier(value)


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
    status: str = Field("status", description="Transaction status column.")
    amount: str = Field("amount", description="Amount charged.")
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

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        shop_zone(value)
        return value

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
        return self.transactions.c[getattr(self.mapping.transactions, field)]

    def has_o(self, field: str) -> bool:
        return getattr(self.mapping.orders, field) is not None

    def has_t(self, field: str) -> bool:
        return getattr(self.mapping.transactions, field) is not None

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
    orders = sa.table(
        mapping.orders.table, *(sa.column(c) for c in _mapped_columns(mapping.orders))
    )
    transactions = sa.table(
        mapping.transactions.table, *(sa.column(c) for c in _mapped_columns(mapping.transactions))
    )
    return AppSchema(
        mapping=mapping, orders=orders, transactions=transactions, aware_columns=aware_columns
    )


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
        aware.update(
            (section.table, col["name"])
            for col in columns
            if getattr(col["type"], "timezone", False) is True
        )
        present_lower = {name.lower() for name in present}
        missing = [
            c
            for c in _mapped_columns(section)
            # MySQL and SQLite compare column names case-insensitively.
            if c not in present
            and (engine.dialect.name == "postgresql" or c.lower() not in present_lower)
        ]
        if missing:
            raise SchemaMismatchError(
                f"table {section.table!r} lacks column(s) {', '.join(repr(m) for m in missing)} "
                f"named in the schema mapping"
            )
    return dataclasses.replace(build_schema(mapping, frozenset(aware)), order_key_type=key_type)
