"""An order and its payments as read from the shop, and amounts as the shop stores them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any


@dataclass(frozen=True)
class OrderRow:
    id: Any
    status: str | None
    total: Any
    currency: str | None = None
    deleted_at: Any = None
    # The guards of the mapping that keep this order from being flipped, in words,
    # as the database judged them when the row was read (see shop/guards.py).
    guard_failures: tuple[str, ...] = ()


@dataclass(frozen=True)
class TransactionRow:
    id: Any
    status: str | None
    amount: Any
    currency: str | None = None
    completed_at: dt.datetime | None = None
    reference: str | None = None


def to_decimal(value: Any) -> Decimal | None:
    """An amount as a Decimal, or None when it is missing or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    return amount if amount.is_finite() else None


def currency_code(value: Any) -> str | None:
    """A currency as every comparison reads it (this, and ``detection.orphans.currencies_differ`` in SQL):
    surrounding spaces are padding (a CHAR column's; MariaDB ignores them anyway), case does
    not matter, and an empty code is no currency. ``"EUR "`` is EUR, for the check, the run
    and ``regularize-order`` alike."""
    if value is None:
        return None
    return str(value).strip(" ").upper() or None
