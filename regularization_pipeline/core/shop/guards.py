"""Guards and repairs: the parts of a schema mapping about more than the one status column.

Many shops keep the payment state and the order state in separate columns: the
column the pipeline repairs says "not charged" while another says the order is
``canceled``, ``expired`` or still a ``draft``. *Guards* are conditions on any
column of the orders table: ``require`` conditions must all hold for an order to
be flipped, and any ``do_not_touch`` condition that matches makes the order
do-not-touch whatever its status says. *Repairs* are the other columns the shop
sets when it learns of a payment (a charged amount, a paid date), written by the
same compare-and-set as the status.

Every expression built here is two-valued (never SQL NULL), so negating one is
safe: a NULL satisfies only ``is_null: true``, never ``in`` or ``not_in`` (when in
doubt, hold), and a NULL never matches a do-not-touch ``in`` list.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from regularization_pipeline.core.shop.identifiers import check_identifier

# A value a guard compares with: the shop's status words, or numbers and flags.
GuardValue = str | int | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ColumnCondition(_Strict):
    """A condition on one column of the orders table: exactly one of ``in``, ``not_in``, ``is_null``."""

    column: str = Field(description="A column of the orders table.")
    in_: tuple[GuardValue, ...] | None = Field(
        None, alias="in", min_length=1, description="The column holds one of these values."
    )
    not_in: tuple[GuardValue, ...] | None = Field(
        None, min_length=1, description="The column holds a value, none of these."
    )
    is_null: bool | None = Field(
        None, description="true: the column is NULL; false: the column is set (any value)."
    )

    @field_validator("column")
    @classmethod
    def _column(cls, value: str) -> str:
        return check_identifier(value)

    @model_validator(mode="after")
    def _one_test(self) -> ColumnCondition:
        given = [n for n in ("in_", "not_in", "is_null") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"condition on {self.column!r} needs exactly one of in, not_in, is_null"
            )
        for name in ("in_", "not_in"):
            if any(v == "" for v in getattr(self, name) or ()):
                raise ValueError(f"condition on {self.column!r} lists an empty value")
        return self

    def describe(self) -> str:
        """The condition in words, from the mapping only (never a value read from the shop)."""
        if self.in_ is not None:
            return f"{self.column} in {list(self.in_)}"
        if self.not_in is not None:
            return f"{self.column} not in {list(self.not_in)}"
        return f"{self.column} is {'NULL' if self.is_null else 'set'}"

    def matches(self, column: sa.ColumnClause) -> sa.ColumnElement[bool]:
        """True or false for every row, never NULL: see the module's docstring."""
        if self.is_null is not None:
            return column.is_(None) if self.is_null else column.is_not(None)
        test = column.in_(self.in_) if self.in_ is not None else column.not_in(self.not_in)
        return sa.and_(column.is_not(None), test)


class OrderGuards(_Strict):
    """Conditions on the orders table, beside the status column, that decide whether an order may be flipped."""

    require: tuple[ColumnCondition, ...] = Field(
        (), description="Every condition must hold for an order to be flipped."
    )
    do_not_touch: tuple[ColumnCondition, ...] = Field(
        (),
        description=(
            "Any condition that matches makes the order do-not-touch whatever its status says; "
            "a completed payment on it is reported as paid_but_cancelled."
        ),
    )

    @property
    def columns(self) -> list[str]:
        return [c.column for c in (*self.require, *self.do_not_touch)]


class Repair(_Strict):
    """What the flip writes into one more column: exactly one of ``value``, ``now``, ``copy``."""

    value: GuardValue | None = Field(None, description="A constant (a status word, a flag).")
    now: bool | None = Field(
        None, description="true: the current time, in the shop's zone and the column's type."
    )
    copy_from: str | None = Field(
        None,
        alias="copy",
        description="Another column of the order, whose value is copied (e.g. the order total).",
    )

    @field_validator("copy_from")
    @classmethod
    def _source(cls, value: str | None) -> str | None:
        return value if value is None else check_identifier(value)

    @model_validator(mode="after")
    def _one_source(self) -> Repair:
        given = [n for n in ("value", "now", "copy_from") if getattr(self, n) is not None]
        if len(given) != 1 or self.now is False:
            raise ValueError("a repair needs exactly one of value, now: true, copy")
        return self

    def describe(self) -> str:
        if self.now:
            return "the current time"
        if self.copy_from is not None:
            return f"the order's {self.copy_from}"
        return repr(self.value)


def check_repairs(repairs: dict[str, Repair], status: str, updated_at: str | None, key: str):
    """Refuse repairs that would fight the flip's own writes (the mapping validator calls it)."""
    for column, repair in repairs.items():
        try:
            check_identifier(column)
        except ValueError as exc:
            raise ValueError(f"repairs: {exc}") from None
        if column in (status, key):
            raise ValueError(
                f"repairs.{column}: the status and the key column are written by the flip "
                "itself or never"
            )
        if column == updated_at:
            raise ValueError(
                f"repairs.{column}: it is orders.updated_at, already set to now by the flip"
            )
        if repair.copy_from == column:
            raise ValueError(f"repairs.{column}: copies itself")


# --- SQL ------------------------------------------------------------------------------


class BoundOrders(Protocol):
    """What the statements below read of the mapping bound to the database
    (``shop.binding.AppSchema``, which imports this module through the mapping)."""

    mapping: Any  # shop.mapping.SchemaMapping: its guards and repairs
    orders: sa.TableClause

    def shop_time(self, column: sa.ColumnClause, value: dt.datetime) -> dt.datetime: ...


def order_guard_conditions(s: BoundOrders) -> list[sa.ColumnElement[bool]]:
    """What must hold of an order row for the guards to let it be flipped (none: no guards)."""
    guards = s.mapping.guards
    return [c.matches(s.orders.c[c.column]) for c in guards.require] + [
        ~c.matches(s.orders.c[c.column]) for c in guards.do_not_touch
    ]


def guard_blockers(s: BoundOrders) -> list[tuple[str, sa.ColumnElement[bool]]]:
    """(description, true when it keeps the order from being flipped), one per guard."""
    guards = s.mapping.guards
    return [
        (f"requires {c.describe()}", ~c.matches(s.orders.c[c.column])) for c in guards.require
    ] + [
        (f"do not touch when {c.describe()}", c.matches(s.orders.c[c.column]))
        for c in guards.do_not_touch
    ]


def guarded_out(s: BoundOrders) -> sa.ColumnElement[bool] | None:
    """True for an order a guard keeps from being flipped; None when the mapping has no guards."""
    blockers = [expr for _, expr in guard_blockers(s)]
    return sa.or_(*blockers) if blockers else None


def repair_values(s: BoundOrders) -> dict[str, sa.ColumnElement]:
    """The SET clause entries of the repairs; times are bound as ``p_repair_<column>``."""
    values: dict[str, sa.ColumnElement] = {}
    for column, repair in s.mapping.repairs.items():
        if repair.now:
            values[column] = sa.bindparam(f"p_repair_{column}")
        elif repair.copy_from is not None:
            values[column] = s.orders.c[repair.copy_from]
        else:
            values[column] = sa.literal(repair.value)
    return values


def repair_times(s: BoundOrders, now) -> dict:
    """The bound times of the ``now`` repairs: naive UTC ``now`` as each column stores times."""
    return {
        f"p_repair_{column}": s.shop_time(s.orders.c[column], now)
        for column, repair in s.mapping.repairs.items()
        if repair.now
    }
