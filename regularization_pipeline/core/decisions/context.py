"""What every step of a decision shares: the run context, the statements it runs on the
shop's orders and payments (built once per run), and the fault points the crash tests use.

Rebuilding a statement for every order cost more Python time than the database spent
running it; built once with bind parameters, SQLAlchemy reuses its compiled form. The same
statements serve one order and a batch: the flip and the payments take a list of ids.
(An order's outcome, ``verdicts.OrderOutcome``, is named here too.)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import sqlalchemy as sa

from regularization_pipeline.core.delivery.transactional import TransactionalDelivery
from regularization_pipeline.core.detection.window import ScanWindow
from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.core.shop.binding import AppSchema, order_is_pending
from regularization_pipeline.core.shop.driver_sql import DriverSql
from regularization_pipeline.core.shop.engine import supports_skip_locked
from regularization_pipeline.core.shop.guards import guard_blockers, repair_times, repair_values
from regularization_pipeline.core.shop.rows import OrderRow, TransactionRow

# An order's outcome is a word of the run's count, defined with the others; named here too.
from regularization_pipeline.core.verdicts import LOCKED_ELSEWHERE as LOCKED_ELSEWHERE
from regularization_pipeline.core.verdicts import PROVIDER_UNAVAILABLE as PROVIDER_UNAVAILABLE
from regularization_pipeline.core.verdicts import OrderOutcome as OrderOutcome


class LockedOrder(NamedTuple):
    """An order as read under its row lock, with its payments (None: absent or locked elsewhere).

    ``attempts_row``: False when the order is known to have no attempts row (nothing to reset)."""

    order: OrderRow | None
    payments: list[TransactionRow]
    attempts_row: bool = True


def same_order_id(stored: Any, given: Any) -> bool:
    """Whether the row found is the order asked for, exactly.

    MySQL/MariaDB compare a string with an integer column as a number: asked for
    order '1; DROP TABLE orders', they return order 1. Bound parameters make that
    harmless as SQL, but acting on order 1 would still be wrong.
    """
    return str(stored) == str(given)


class OrderStatements:
    """The statements one order's (or one batch's) decision runs, for one schema and engine."""

    def __init__(self, engine: sa.Engine, schema: AppSchema, tables: tb.OwnedTables):
        self.schema = schema
        self.tables = tables
        self.skip_locked = supports_skip_locked(engine)
        self.dialect = engine.dialect
        self.reads_locked_together = engine.dialect.name == "postgresql"

    @cached_property
    def order_columns(self) -> list:
        """The columns of an :class:`OrderRow`, in its field order, then one 0/1 per guard.

        The guards are judged by the database, with the very expressions the claim and
        the flip use, so the decision cannot disagree with them (collations included).
        """
        s = self.schema
        return [
            s.o("id"),
            s.o("status"),
            s.o("total"),
            s.currency("o") if s.has_o("currency") else sa.null(),
            s.o("deleted_at") if s.has_o("deleted_at") else sa.null(),
            *(sa.case((blocks, 1), else_=0) for _, blocks in guard_blockers(s)),
        ]

    @cached_property
    def _guard_words(self) -> list[str]:
        return [words for words, _ in guard_blockers(self.schema)]

    def order_row(self, row: sa.Row) -> OrderRow:
        """An :class:`OrderRow` from a row read with :attr:`order_columns`."""
        failures = tuple(w for w, flag in zip(self._guard_words, row[5:], strict=True) if flag)
        return OrderRow(*row[:5], guard_failures=failures)

    @cached_property
    def _one_order(self) -> sa.Select:
        return sa.select(*self.order_columns).where(self.schema.o("id") == sa.bindparam("p_order"))

    @cached_property
    def _locked_order(self) -> sa.Select:
        return (
            self._one_order.with_for_update(skip_locked=True)
            if self.skip_locked
            else self._one_order
        )

    @cached_property
    def _locked_read(self) -> DriverSql:
        return DriverSql(self._locked_with_payments, self.dialect)

    @cached_property
    def _order_reads(self) -> dict[bool, DriverSql]:
        """:attr:`_locked_order` and :attr:`_one_order`, by ``lock``."""
        return {
            True: DriverSql(self._locked_order, self.dialect),
            False: DriverSql(self._one_order, self.dialect),
        }

    @cached_property
    def _payments_read(self) -> DriverSql:
        return DriverSql(self._payments_with_attempts, self.dialect)

    @cached_property
    def one_flip(self) -> DriverSql:
        """:attr:`flip` for one order."""
        return DriverSql(self.flip, self.dialect, lists=("p_orders",))

    @cached_property
    def exists(self) -> sa.Select:
        """The order's key, when some row answers to ``p_order``."""
        s = self.schema
        return sa.select(s.o("id")).where(s.o("id") == sa.bindparam("p_order"))

    @cached_property
    def _payment_columns(self) -> list:
        """The columns of a :class:`TransactionRow` after its order's id (see :meth:`_payment`)."""
        s = self.schema
        return [
            s.t("order_id"),
            s.t("id"),
            s.t("status"),
            s.t("amount"),
            s.currency("t") if s.has_t("currency") else sa.null(),
            s.tx_completed_at,
            s.t("reference") if s.has_t("reference") else sa.null(),
        ]

    def _payment(self, row) -> TransactionRow:
        """A :class:`TransactionRow` from the values of :attr:`_payment_columns`."""
        paid_at = self.schema.read_time(row[5])
        return TransactionRow(row[1], row[2], row[3], row[4], paid_at, row[6])

    @cached_property
    def _payments(self) -> sa.Select:
        s = self.schema
        return (
            sa.select(*self._payment_columns)
            .where(s.t("order_id").in_(sa.bindparam("p_orders", expanding=True)))
            .order_by(s.t("order_id"), s.t("id"))
        )

    @cached_property
    def _payments_with_attempts(self) -> sa.Select:
        """One order's payments, each with its attempts row's key (null when it has none).

        A regularized order's attempts are reset only when it has a row: on MariaDB the reset
        is a round trip of its own, for the few orders that ever failed. Read in the order's
        locked transaction (READ COMMITTED), just before the reset would be made.
        """
        s, at = self.schema, self.tables.attempts
        key = sa.bindparam("p_key", type_=sa.String)  # the order's id as text, as rows are keyed
        row = sa.select(at.c.order_id).where(at.c.order_id == key).scalar_subquery()
        return (
            sa.select(*self._payment_columns, row.label("attempts_row"))
            .where(s.t("order_id") == sa.bindparam("p_order"))
            .order_by(s.t("id"))
        )

    @cached_property
    def _locked_with_payments(self) -> sa.Select:
        """PostgreSQL: the order under its row lock and its payments, one row per payment.

        ``FOR UPDATE OF`` locks the order's row alone, as :attr:`_locked_order` does; the
        payments are read in the locked transaction without a lock, as :attr:`_payments`
        reads them. (MariaDB locks every row such a join reads, and ``SKIP LOCKED`` would
        then leave out a payment another transaction holds: it reads them apart.)
        """
        s = self.schema
        paid = s.orders.outerjoin(s.transactions, s.t("order_id") == s.o("id"))
        return (
            sa.select(*self.order_columns, *self._payment_columns)
            .select_from(paid)
            .where(s.o("id") == sa.bindparam("p_order"))
            .order_by(s.t("id"))
            .with_for_update(of=s.orders, skip_locked=True)
        )

    @cached_property
    def flip(self) -> sa.Update:
        """The compare-and-set: pending orders among ``p_orders`` become completed."""
        s = self.schema
        values = {s.mapping.orders.status: s.statuses.order_completed}
        if s.has_o("updated_at"):
            values[s.mapping.orders.updated_at] = sa.bindparam("p_order_now")
        values.update(repair_values(s))
        # The guards are part of the compare-and-set: a guard that changed since the
        # re-read (an order cancelled meanwhile) leaves the row unmoved.
        return (
            s.orders.update()
            .where(s.o("id").in_(sa.bindparam("p_orders", expanding=True)), *order_is_pending(s))
            .values(values)
        )

    def flip_params(self, order_ids: list, now) -> dict:
        """The parameters of :attr:`flip` for ``order_ids`` at naive UTC ``now``."""
        s = self.schema
        # The application's own columns: written in the shop's zone and type, as it writes them.
        when = s.shop_time(s.o("updated_at"), now) if s.has_o("updated_at") else None
        return {"p_orders": order_ids, "p_order_now": when, **repair_times(s, now)}

    def load_order(self, conn: sa.Connection, order_id: Any, *, lock: bool) -> OrderRow | None:
        """The order as stored (under its row lock when ``lock``), or None: absent or locked elsewhere."""
        row = self._order_reads[lock].execute(conn, {"p_order": order_id}).first()
        return self.order_row(row) if row is not None and same_order_id(row[0], order_id) else None

    def load_locked(self, conn: sa.Connection, order_id: Any) -> LockedOrder:
        """The order under its row lock and its payments; no order when absent or locked
        elsewhere. One round trip on PostgreSQL, two elsewhere."""
        if not self.reads_locked_together:
            order = self.load_order(conn, order_id, lock=True)
            if order is None:
                return LockedOrder(None, [])
            keys = {"p_order": order_id, "p_key": str(order_id)}
            rows = self._payments_read.execute(conn, keys).all()
            payments = [self._payment(row) for row in rows if same_order_id(row[0], order_id)]
            # Without payments nothing is flipped: whether the row exists does not matter.
            return LockedOrder(order, payments, attempts_row=not rows or rows[0][-1] is not None)
        rows = self._locked_read.execute(conn, {"p_order": order_id}).all()
        if not rows or not same_order_id(rows[0][0], order_id):
            return LockedOrder(None, [])
        width = len(self.order_columns)
        # An order without payments comes back once, its payment columns null.
        payments = [self._payment(row[width:]) for row in rows if row[width + 1] is not None]
        return LockedOrder(self.order_row(rows[0][:width]), payments)

    def payments_of(self, conn: sa.Connection, order_ids: list) -> dict[Any, list[TransactionRow]]:
        """Every payment of the orders, by order id, in transaction id order."""
        found: dict[Any, list[TransactionRow]] = {}
        for row in conn.execute(self._payments, {"p_orders": list(order_ids)}):
            found.setdefault(row[0], []).append(self._payment(row))
        return found

    def payments(self, conn: sa.Connection, order_id: Any) -> list[TransactionRow]:
        """The payments of one order."""
        return next(iter(self.payments_of(conn, [order_id]).values()), [])


def completed_payments(statements: OrderStatements, payments: Sequence[TransactionRow]) -> list:
    completed = statements.schema.statuses.transaction_completed
    return [p for p in payments if p.status in completed]


# Orders per query when figures are read for many: bounded IN lists.
FIGURES_CHUNK = 500


def orders_and_payments(
    conn: sa.Connection, statements: OrderStatements, order_ids: Sequence
) -> tuple[dict[str, OrderRow], dict[str, list[TransactionRow]]]:
    """The orders (by id as text) and their completed payments: what an inconsistency's audit
    row and ``list-inconsistencies`` show. Two queries per FIGURES_CHUNK ids."""
    s = statements.schema
    orders: dict[str, OrderRow] = {}
    payments: dict[str, list[TransactionRow]] = {}
    ids = list(dict.fromkeys(order_ids))
    for start in range(0, len(ids), FIGURES_CHUNK):
        chunk = ids[start : start + FIGURES_CHUNK]
        query = sa.select(*statements.order_columns).where(s.o("id").in_(chunk))
        for row in conn.execute(query):
            order = statements.order_row(row)
            orders[str(order.id)] = order
        for key, found in statements.payments_of(conn, chunk).items():
            payments[str(key)] = completed_payments(statements, found)
    return orders, payments


class Fault(Exception):
    """Raised by test fault hooks; never by production code."""


# Called with (point, order id) at the points a crash would hurt most; tests raise from
# it to prove a crash anywhere leaves nothing behind, and pick one order by its id.
FaultHook = Callable[[str, Any], None]


def no_fault(_point: str, _order_id: Any) -> None:
    return None


@dataclass(frozen=True)
class RunContext:
    """What every step of a run needs, passed as one: where it writes, when, and on what terms."""

    engine: sa.Engine
    schema: AppSchema
    tables: tb.OwnedTables
    statements: OrderStatements
    clock: Callable[[], dt.datetime]
    fault: FaultHook
    run_id: str
    window: ScanWindow
    dry_run: bool = False
    max_attempts: int = 5
    # Publishers that enqueue in the flip's own transaction (Laravel's database queue).
    transactional: TransactionalDelivery = TransactionalDelivery()

    @property
    def skip_locked(self) -> bool:
        """Whether the shop's database takes ``FOR UPDATE SKIP LOCKED`` (a :class:`RunStamp` term)."""
        return self.statements.skip_locked

    def fault_each(self, point: str, order_ids: list) -> None:
        """The fault point, once per order: every crash test holds for batches too."""
        for order_id in order_ids:
            self.fault(point, order_id)
