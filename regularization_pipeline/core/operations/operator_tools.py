"""What the operator tools do (CLI and the UI's ops jobs): one order at a time, read-only lists, redelivery.

Every write goes through the guarantees of ``regularizer.Regularizer`` and
:class:`OutboxDispatcher`; the functions here only check the operator's input
first, so that a wrong id is refused with a clear :class:`ConfigurationError`
and changes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa

from regularization_pipeline.core import verdicts
from regularization_pipeline.core.clock import as_naive_utc, utcnow
from regularization_pipeline.core.decisions.context import (
    OrderStatements,
    orders_and_payments,
    same_order_id,
)
from regularization_pipeline.core.delivery.outbox import OutboxDispatcher
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.detection.held import quarantined_order_ids
from regularization_pipeline.core.detection.scans import (
    inconsistency_report,
    with_provider_failures,
)
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.operations.explain import (
    FIGURE_COLUMNS,
    Explanation,
    explain,
    figure_rows,
)
from regularization_pipeline.core.run import RunOptions
from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.core.shop.binding import AppSchema
from regularization_pipeline.core.verdicts import QUARANTINED, OrderOutcome


def parse_utc_time(text: str) -> dt.datetime:
    """An ISO 8601 time as naive UTC (a time without offset is taken as UTC); ValueError when malformed."""
    value = dt.datetime.fromisoformat(text.strip())
    return as_naive_utc(value)


def existing_order_id(conn: sa.Connection, schema: AppSchema, order_id: str) -> Any:
    """The order's id as the database holds it; ConfigurationError when there is no such order.

    The text is parsed against the key's type first, and the row found must carry
    exactly that key: a MySQL-family server would otherwise answer '1O' with order 1.
    """
    key = schema.parse_order_id(order_id)
    found = None
    if key is not None:
        column = schema.o("id")
        try:
            found = conn.execute(sa.select(column).where(column == key)).first()
        except sa.exc.DataError:  # PostgreSQL: out of the key type's range
            found = None
    if found is None or not same_order_id(found[0], key):
        shown = order_id if order_id.isprintable() and order_id == order_id.strip() else None
        raise ConfigurationError(f"order {shown or repr(order_id)} does not exist")
    return found[0]


class OneOrderRegularizer(Protocol):
    """What :func:`regularize_order` needs of ``regularizer.Regularizer``: its database and its
    one-order decision (named by what it does, so the operator tools sit beside the run, not on it)."""

    engine: sa.Engine
    schema: AppSchema
    statements: OrderStatements

    def regularize_one(
        self, order_id: Any, run_id: str, options: RunOptions, window: d.ScanWindow | None = None
    ) -> OrderOutcome: ...


def regularize_order(
    regularizer: OneOrderRegularizer, order_id: str, options: RunOptions, run_id: str
) -> OrderOutcome:
    """Regularize one named order, if and only if a run would regularize it now.

    The gate is the run's own decision (:func:`explain`: the scan's conditions, then the
    verdict on its rows), so an order a run leaves or holds is refused here too, before
    anything is written. The order is then decided exactly like in a run (lock,
    re-verify, compare-and-set flip, one outbox row, one audit row): a late webhook or an
    overlapping run still wins cleanly.
    """
    window = options.window(utcnow())
    with regularizer.engine.connect() as conn:
        key = existing_order_id(conn, regularizer.schema, order_id)
        found = explain(conn, regularizer.statements, key, window)
    if found is None:
        raise ConfigurationError(f"order {order_id} does not exist")
    if found.quarantine is not None:
        # A run skips it; one by hand is a decision to try again, so it goes through release.
        raise ConfigurationError(
            f"order {key} is quarantined (last: {found.quarantine}): lift it with "
            f"`regularize-completed-orders release --order-id {key}` first"
        )
    if not found.would_regularize:
        raise ConfigurationError(f"order {key} {_refusal(found)}: nothing to regularize")
    return regularizer.regularize_one(key, run_id, options, window)


def _refusal(found: Explanation) -> str:
    """Why not, in the words of the decision a run would take on it."""
    verdict = found.verdict
    if verdict.action == verdicts.REGULARIZED:
        return "is not an orphan a run would fix (the scan does not take it)"
    if verdict.action == verdicts.INCONSISTENT and verdict.kind != d.PAID_BUT_CLOSED:
        return f"is held for a human, a run never fixes it ({verdict.reason})"
    return f"is not an orphan ({verdict.reason})"


@dataclass(frozen=True)
class OrphanRow:
    order_id: Any
    order_status: str
    transaction_id: Any
    payment_reference: str | None
    completed_at: dt.datetime | None
    age_minutes: float

    COLUMNS = (
        "order_id",
        "order_status",
        "transaction_id",
        "payment_reference",
        "completed_at_utc",
        "age_minutes",
    )

    def values(self) -> tuple:
        return (
            self.order_id,
            self.order_status,
            self.transaction_id,
            self.payment_reference or "",
            self.completed_at.isoformat(sep=" ") if self.completed_at else "",
            self.age_minutes,
        )


def orphan_rows(
    conn: sa.Connection, schema: AppSchema, window: d.ScanWindow, limit: int | None = None
) -> list[OrphanRow]:
    """The orphans a run would fix, oldest payment first: ids, the provider's reference of the
    payment (when the mapping names one), statuses and times only. Held orders are left
    out (``inconsistency_rows`` lists them)."""
    s = schema
    first_paid = sa.func.min(s.tx_completed_at)
    reference = sa.func.min(s.t("reference")) if s.has_t("reference") else sa.null()
    attempts = tb.owned_tables(s.mapping.table_prefix).attempts
    migrated = sa.inspect(conn).has_table(attempts.name)
    query = (
        d.select_orphan_payments(
            s, window, s.o("id"), s.o("status"), sa.func.min(s.t("id")), reference, first_paid
        )
        .where(d.fixable_condition(s, window, attempts if migrated else None))
        .group_by(s.o("id"), s.o("status"))
        .order_by(first_paid, s.o("id"))
    )
    if limit is not None:
        query = query.limit(limit)
    rows = []
    for order_id, status, tx_id, ref, completed_at in conn.execute(query).all():
        when = s.read_time(completed_at)
        age = round(max((window.now - when).total_seconds(), 0.0) / 60.0, 1) if when else 0.0
        rows.append(OrphanRow(order_id, str(status), tx_id, ref, when, age))
    return rows


INCONSISTENCY_COLUMNS = ("kind", "order_id", *FIGURE_COLUMNS)


def inconsistency_rows(
    conn: sa.Connection, schema: AppSchema, window: d.ScanWindow | None
) -> list[tuple]:
    """For every order the pipeline holds and never fixes (each kind of inconsistency, and the
    orders quarantined after repeated failures): its kind, id and the figures to settle it,
    one row per completed payment (order status, total and currency; the payment's id,
    amount, currency and completion time in UTC)."""
    report = inconsistency_report(conn, schema, window, sample_size=None)
    quarantined: list = []
    attempts = tb.owned_tables(schema.mapping.table_prefix).attempts
    if sa.inspect(conn).has_table(attempts.name):  # read-only before migrate too
        report = with_provider_failures(conn, schema, report)
        quarantined = quarantined_order_ids(conn, schema)
    held = [
        (kind, order_id)
        for kind in d.INCONSISTENCY_KINDS
        for order_id in report.order_ids.get(kind, [])
    ]
    held += [(QUARANTINED, order_id) for order_id in quarantined]
    statements = OrderStatements(conn.engine, schema, tb.owned_tables(schema.mapping.table_prefix))
    orders, payments = orders_and_payments(conn, statements, [i for _k, i in held])
    return [
        (kind, order_id, *figures)
        for kind, order_id in held
        for figures in figure_rows(orders.get(str(order_id)), payments.get(str(order_id), []))
    ]


def dead_event_ids(
    conn: sa.Connection,
    tables: tb.OwnedTables,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[str]:
    """Dead-lettered events, optionally only those created in [since, until]."""
    ob = tables.outbox
    query = sa.select(ob.c.event_id).where(ob.c.state == tb.DEAD)
    if since is not None:
        query = query.where(ob.c.created_at >= since)
    if until is not None:
        query = query.where(ob.c.created_at <= until)
    return list(conn.execute(query.order_by(ob.c.id)).scalars())


def redeliver_dead_events(
    engine: sa.Engine,
    tables: tb.OwnedTables,
    event_ids: Sequence[str] = (),
    all_dead: bool = False,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> int:
    """Put dead events back in the queue (core's OutboxDispatcher.redeliver); returns how many.

    Named events must all exist and be dead, or nothing changes: a typo must
    not pass for "redelivered 2 of 3".
    """
    if bool(event_ids) == bool(all_dead):
        raise ConfigurationError("give event ids or all_dead, not both and not neither")
    if since and until and since >= until:
        raise ConfigurationError("since must be earlier than until")
    ob = tables.outbox
    with engine.connect() as conn:
        if event_ids:
            states = dict(
                conn.execute(
                    sa.select(ob.c.event_id, ob.c.state).where(ob.c.event_id.in_(list(event_ids)))
                ).all()
            )
            unknown = [e for e in event_ids if e not in states]
            if unknown:
                raise ConfigurationError(f"unknown event id(s): {', '.join(unknown)}")
            alive = [e for e in event_ids if states[e] != tb.DEAD]
            if alive:
                raise ConfigurationError(
                    f"not dead-lettered: {', '.join(f'{e} ({states[e]})' for e in alive)}"
                )
            chosen = list(event_ids)
        else:
            chosen = dead_event_ids(conn, tables, since, until)
    if not chosen:
        return 0
    # Publishers are not needed to move rows back to pending: the next run delivers them.
    dispatcher = OutboxDispatcher(engine, tables, [], owner="operator")
    return sum(
        dispatcher.redeliver(event_ids=chosen[i : i + 500]) for i in range(0, len(chosen), 500)
    )


def explain_order(
    conn: sa.Connection, schema: AppSchema, order_id: str, window: d.ScanWindow
) -> Explanation:
    """What a run with ``window`` would do with the named order, read-only; ConfigurationError
    when there is no such order."""
    key = existing_order_id(conn, schema, order_id)
    statements = OrderStatements(conn.engine, schema, tb.owned_tables(schema.mapping.table_prefix))
    found = explain(conn, statements, key, window)
    if found is None:
        raise ConfigurationError(f"order {order_id} does not exist")
    return found
