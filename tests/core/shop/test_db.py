"""A batch's rows, rendered by the database from one JSON parameter, come back exactly, on every
backend; one row's insert is part of the caller's transaction.
SQLite: reads never take the write lock, writes do."""

import datetime as dt
import sqlite3
from decimal import Decimal

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.decisions.audit import DECISION_COLUMNS, audit_insert
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.shop.engine import create_app_engine, insert_row, rows_as_json
from tests.support.databases import migrated_shop
from tests.support.rows import owned

AWKWARD_REASONS = [
    "",  # an empty string is not NULL
    'a "quoted", comma-separated\nmulti-line reason',
    "Zahlung bestätigt — 支払い済み",
    "\\N and \\t are text, not escapes",
    "100% paid, %s and %(x)s are text, not placeholders; it's O'Brien's \\' too",
]


def _write_batch(shop, rows: list[dict], now: dt.datetime) -> None:
    audit = owned(shop).audit
    values = [tuple(row.get(name) for name in DECISION_COLUMNS) for row in rows]
    with shop.engine.begin() as conn:
        params = {"p_rows": rows_as_json(values), "p_run": "r", "p_now": now}
        conn.execute(audit_insert(audit, conn.dialect), params)


def test_a_batch_round_trips_nulls_quotes_newlines_and_times(shop):
    audit = owned(shop).audit
    naive = dt.datetime(2026, 11, 25, 10, 30, 15, 123456)
    aware = dt.datetime(2026, 11, 25, 12, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    rows = [
        dict(
            order_id=str(n),
            transaction_id=None if n % 2 else f"tx-{n}",
            action="regularized",
            reason=reason,
            attempt=n,
            order_status="pending",
            order_amount=Decimal("49.90") if n else None,
            transaction_amount=Decimal("-0.000001"),
            currency=None,
            transaction_completed_at=aware if n else None,
        )
        for n, reason in enumerate(AWKWARD_REASONS)
    ]
    _write_batch(shop, rows, naive)

    with shop.engine.connect() as conn:
        stored = conn.execute(sa.select(audit).order_by(audit.c.attempt)).mappings().all()
    assert [r["reason"] for r in stored] == AWKWARD_REASONS
    assert [r["transaction_id"] for r in stored] == ["tx-0", None, "tx-2", None, "tx-4"]
    assert [r["currency"] for r in stored] == [None] * 5
    assert stored[0]["order_amount"] is None and stored[1]["order_amount"] == Decimal("49.90")
    assert {r["transaction_amount"] for r in stored} == {Decimal("-0.000001")}
    assert stored[0]["transaction_completed_at"] is None
    # An aware time is stored as naive UTC, the convention of every timestamp we write.
    assert {r["transaction_completed_at"] for r in stored[1:]} == {
        dt.datetime(2026, 11, 25, 10, 30, 15, 123456)
    }
    assert {r["created_at"] for r in stored} == {naive}
    assert {r["run_id"] for r in stored} == {"r"}


def test_a_batch_of_1500_rows_is_one_statement_with_its_time_given_once(shop):
    audit = owned(shop).audit
    when = dt.datetime(2026, 11, 25, 10, 30, 15, 123456)
    rows = [
        dict(order_id=str(n), action="regularized", reason=reason, attempt=n)
        for n, reason in enumerate(AWKWARD_REASONS * 300)
    ]
    _write_batch(shop, rows, when)
    with shop.engine.connect() as conn:
        stored = conn.execute(sa.select(audit).order_by(audit.c.id)).mappings().all()
    assert [r["reason"] for r in stored] == [r["reason"] for r in rows]
    assert [r["order_id"] for r in stored] == [str(n) for n in range(len(rows))]
    assert {r["created_at"] for r in stored} == {when}


def test_insert_row_is_part_of_the_callers_transaction(shop):
    audit = owned(shop).audit
    row = dict(
        run_id="r",
        order_id="1",
        action="failed",
        reason="rolled back",
        attempt=0,
        created_at=dt.datetime(2026, 1, 1),
    )
    try:
        with shop.engine.begin() as conn:
            insert_row(conn, audit, row)
            raise RuntimeError("the batch fails after its inserts")
    except RuntimeError:
        pass
    with shop.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit)).scalar_one() == 0


def test_the_application_inserts_into_a_sqlite_shop_while_the_checks_read(tmp_path):
    engine = create_app_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    shop = migrated_shop(engine)
    shop.orphans(3)
    # The application's own connection, with a short busy timeout: a held write lock fails it.
    app = sqlite3.connect(tmp_path / "shop.db", timeout=0.5, isolation_level=None)
    try:
        with engine.connect() as checks:  # a check's read transaction, still open
            stats = d.orphan_stats(checks, shop.schema, d.ScanWindow(now=utcnow()), sample_size=0)
            app.execute(
                "INSERT INTO orders (status, total, created_at) VALUES ('pending', 1, '2026-01-01')"
            )
        assert stats.count == 3
        with engine.begin() as write, pytest.raises(sqlite3.OperationalError, match="locked"):
            write.execute(sa.text("SELECT 1"))  # a write transaction holds the lock from BEGIN
            app.execute(
                "INSERT INTO orders (status, total, created_at) VALUES ('pending', 2, '2026-01-01')"
            )
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM orders")).scalar() == 4
    finally:
        app.close()
        engine.dispose()
