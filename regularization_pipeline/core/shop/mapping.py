"""The mapping of the application's tables, columns and status values.

The orders and transactions tables belong to the application, not to us, so
every name the pipeline uses comes from a :class:`SchemaMapping`. Its defaults
follow Laravel conventions; a YAML file named by ``REGULARIZATION_SCHEMA_FILE``
overrides any part of it. :func:`~regularization_pipeline.core.shop.binding.bind_schema` binds it to the
live database (``binding.py``).

Beyond the two tables' columns a mapping can name guards and repairs (other
columns of the orders table, :mod:`~regularization_pipeline.core.shop.guards`),
a link table between orders and payments, payments recorded as data, and a
currency table: the payments are then read as derived rows (one per order and
payment, columns named by field) so every query keeps its one shape.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from regularization_pipeline.core.clock import shop_zone
from regularization_pipeline.core.config_files import read_yaml_mapping, validate_or_explain
from regularization_pipeline.core.exceptions import ConfigurationError
from regularization_pipeline.core.shop.guards import (
    ColumnCondition,
    OrderGuards,
    Repair,
    check_repairs,
)
from regularization_pipeline.core.shop.identifiers import check_identifier
from regularization_pipeline.core.shop.mapping_rules import status_problems

SCHEMA_FILE_ENV = "REGULARIZATION_SCHEMA_FILE"
# A folder of mapping files the Dagster Launchpad's app_db.schema_file may choose among
# (besides REGULARIZATION_SCHEMA_FILE itself); unset: that one file only.
MAPPINGS_DIR_ENV = "REGULARIZATION_MAPPINGS_DIR"


def mapped_columns(section: BaseModel) -> list[str]:
    """The column names a table section maps, leaving out the optional ones set to null."""
    return [v for k, v in section.model_dump().items() if k != "table" and v is not None]


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
        names = mapped_columns(self.orders) + self.guards.columns
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


def deployment_mapping_file(path: str) -> str:
    """The real path of ``path`` when the deployment allows it, else a ConfigurationError.

    For a mapping file named in run config (the Launchpad's ``app_db.schema_file``), which
    anyone who may launch a run can type: it must be the file of ``REGULARIZATION_SCHEMA_FILE``
    or lie in ``REGULARIZATION_MAPPINGS_DIR``, both set by whoever deploys. The real path is
    what is then read, so a symlink swapped in after the check changes nothing.
    """
    real = os.path.realpath(path)
    configured = (os.environ.get(SCHEMA_FILE_ENV) or "").strip()
    if configured and real == os.path.realpath(configured):
        return real
    folder = (os.environ.get(MAPPINGS_DIR_ENV) or "").strip()
    if folder:
        folder = os.path.realpath(folder)
        if real != folder and os.path.commonpath([real, folder]) == folder:
            return real
    raise ConfigurationError(
        f"app_db.schema_file names neither the file of {SCHEMA_FILE_ENV} nor a file in "
        f"{MAPPINGS_DIR_ENV}: a run reads only the mapping files its deployment allows"
    )


def load_mapping(path: str | None = None) -> SchemaMapping:
    """The mapping from ``path``, else from ``$REGULARIZATION_SCHEMA_FILE``, else Laravel defaults."""
    path = path or os.environ.get(SCHEMA_FILE_ENV) or None
    return SchemaMapping.from_yaml(path) if path else SchemaMapping()
