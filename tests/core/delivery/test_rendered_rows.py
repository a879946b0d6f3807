"""A batch's outbox and audit rows, rendered by the database, are the rows Python renders for
one order: on SQLite, PostgreSQL and MariaDB, with foreign text, NULLs and overlong values.

The payload is compared parsed (each database spaces its JSON its own way), and the bytes a
webhook signs, rendered from the parsed payload, are compared byte for byte.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import sqlalchemy as sa

from regularization_pipeline.core import verdicts
from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.decisions.audit import Decision, write_audit
from regularization_pipeline.core.decisions.verification import Verdict, inconsistent
from regularization_pipeline.core.delivery.events import (
    OrderCompleted,
    event_values,
    new_event,
    occurred_at,
    outbox_insert,
    outbox_row,
    webhook_body,
)
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.engine import insert_row, rows_as_json
from regularization_pipeline.core.shop.rows import OrderRow, TransactionRow
from tests.support.rows import owned

NOW = dt.datetime(2026, 3, 1, 12, 30, 45, 123456)
RUN = 'run "quoted" \\ back-slashed, ünïcode'


def _events() -> list[OrderCompleted]:
    return [
        new_event(101, 9001, Decimal("19.90"), "EUR", RUN, NOW),
        new_event("a-€-order", None, None, None, RUN, NOW),
        new_event(103, "tx'103", "0.10", 'Ü"\\\n', RUN, NOW),
    ]


def _without_id(row) -> dict:
    values = dict(row._mapping)
    values.pop("id")
    return values


def _written(engine: sa.Engine, table: sa.Table, write) -> dict:
    """The rows ``write(conn)`` adds to ``table``, by event id, in a transaction rolled back."""
    with engine.connect() as conn, conn.begin() as tx:
        write(conn)
        rows = {row.event_id: _without_id(row) for row in conn.execute(sa.select(table))}
        tx.rollback()
    return rows


def test_a_batch_outbox_row_rendered_by_the_database_is_the_one_python_renders(shop):
    events = _events()
    ob = owned(shop).outbox
    params = {
        "p_events": rows_as_json([event_values(e) for e in events]),
        "p_run": RUN,
        "p_occurred_at": occurred_at(NOW),
        "p_now": NOW,
    }
    by_sql = _written(
        shop.engine, ob, lambda conn: conn.execute(outbox_insert(ob, conn.dialect), params)
    )

    def one_at_a_time(conn):  # the per-order path
        for event in events:
            insert_row(conn, ob, outbox_row(event, NOW))

    by_python = _written(shop.engine, ob, one_at_a_time)
    assert set(by_sql) == set(by_python) == {e.event_id for e in events}
    for event in events:
        sql_row, python_row = by_sql[event.event_id], by_python[event.event_id]
        stored = OrderCompleted.from_json(sql_row["payload"])
        assert json.loads(sql_row.pop("payload")) == json.loads(python_row.pop("payload"))
        assert sql_row == python_row
        assert stored == event
        assert webhook_body(stored) == webhook_body(event)


def _decisions() -> list[Decision]:
    paid = TransactionRow(7, "completed", Decimal("19.90"), "eur", NOW - dt.timedelta(hours=2))
    odd = TransactionRow("tx-ü", "completed", "12345678901234567", None, None)
    order = OrderRow(101, "pending", Decimal("19.90"), "EUR")
    foreign = OrderRow("ü-102", "wächst " * 20, "-3.5", "€" * 40)
    return [
        Decision(101, Verdict(verdicts.REGULARIZED, "completed transaction verified", paid), order),
        Decision(
            "ü-102",
            inconsistent(d.AMOUNT_MISMATCH, "transaction amount differs " + "ß" * 600, odd),
            foreign,
            attempt=3,
        ),
        Decision(103, Verdict(verdicts.SKIPPED, "order not found")),
    ]


def test_a_batch_audit_row_rendered_by_the_database_is_the_one_python_renders(shop):
    regularizer = Regularizer(shop.engine, shop.schema, clock=lambda: NOW)
    options = RunOptions()
    batch = regularizer.context("batch run", options, options.window(NOW))
    alone = regularizer.context("one by one", options, options.window(NOW))
    decisions = _decisions()
    with shop.engine.begin() as conn:
        write_audit(batch, conn, decisions)  # more than one: rendered by the database
        for decision in decisions:
            write_audit(alone, conn, [decision])  # one: rendered in Python
    au = owned(shop).audit
    with shop.engine.connect() as conn:
        rows = [_without_id(row) for row in conn.execute(sa.select(au).order_by(au.c.id))]
    by_sql, by_python = rows[: len(decisions)], rows[len(decisions) :]
    assert [r.pop("run_id") for r in by_sql] == ["batch run"] * len(decisions)
    assert [r.pop("run_id") for r in by_python] == ["one by one"] * len(decisions)
    assert by_sql == by_python
    assert by_sql[0]["order_amount"] == Decimal("19.90")
    assert by_sql[1]["kind"] == d.AMOUNT_MISMATCH
    assert len(by_sql[1]["reason"]) == au.c.reason.type.length


def test_an_order_has_the_same_rows_whichever_mode_wrote_them(shop):
    """Per-order mode (one statement after the flip on PostgreSQL, rows rendered in Python
    elsewhere) and batched mode (rows rendered by the database) leave the same rows."""
    first, *batch = shop.orphans(3)
    now = utcnow()  # one time for both runs: every row's times are the same
    regularizer = Regularizer(shop.engine, shop.schema, clock=lambda: now, sleeper=lambda _s: None)
    alone = regularizer.run(RunOptions(mode="per_order", sleep=0, limit=1))
    batched = regularizer.run(RunOptions(mode="batched", sleep=0, batch_size=10))
    assert (alone.regularized, batched.regularized) == (1, 2)
    tables = owned(shop)
    with shop.engine.connect() as conn:
        events = {r.order_id: r for r in conn.execute(sa.select(tables.outbox))}
        audits = {r.order_id: r for r in conn.execute(sa.select(tables.audit))}
    varying = ("id", "event_id", "order_id", "idempotency_key", "run_id", "transaction_id")

    def event(order_id) -> dict:
        row = _without_id(events[str(order_id)])
        payload = json.loads(row.pop("payload"))
        return {k: v for k, v in {**row, **payload}.items() if k not in varying}

    def audit(order_id) -> dict:
        return {k: v for k, v in _without_id(audits[str(order_id)]).items() if k not in varying}

    for order_id in batch:
        assert event(order_id) == event(first)
        assert audit(order_id) == audit(first)
    assert audit(first)["action"] == verdicts.REGULARIZED
    assert Decimal(event(first)["amount"]) == audit(first)["transaction_amount"] == Decimal("49.90")
