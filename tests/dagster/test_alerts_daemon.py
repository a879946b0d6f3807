"""The alert sensors through a real dagster-daemon, the schedule firing every minute.

What tests/dagster/test_alerts_sensors.py proves tick by tick on a test
instance, here end to end: a cause made in the shop's database, a scheduled
run that sees it, the sensor's next tick, one message on a real HTTP receiver;
then the cause removed and one RESOLVED message. Each delay from cause to
delivery is printed (``[reliability] alert delay ...``) and bounded: one
schedule interval (60 s), the run, one sensor interval (60 s), with margin.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.shop import migrations
from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.defs.jobs import SCHEDULE_CRON_ENV
from regularization_pipeline.demo.shop import ShopWriter
from tests.support.dagster import instance_env
from tests.support.http_stubs import Received, ReceivingApp
from tests.support.processes import running_daemon

pytestmark = pytest.mark.slow

# A schedule tick (60 s) + the run + a sensor tick (60 s), with room for a loaded machine.
TRANSITION_SECONDS = 200


def _message(rec: Received) -> dict:
    return json.loads(rec.body)


class Alerts:
    """The messages the receiver took, and how long each took from its cause."""

    def __init__(self, receiver: ReceivingApp, daemon_log: Path):
        self.receiver, self.daemon_log = receiver, daemon_log

    def of(self, incident: str) -> list[dict]:
        return [
            m
            for m in map(_message, self.receiver.accepted())
            if m["details"]["incident"] == incident
        ]

    def wait(self, incident: str, action: str, cause_at: float) -> dict:
        """The first ``action`` message of ``incident`` after ``cause_at`` (time.monotonic())."""
        deadline = cause_at + TRANSITION_SECONDS
        while time.monotonic() < deadline:
            for rec in self.receiver.accepted():
                message = _message(rec)
                if (
                    rec.at >= cause_at
                    and message["details"]["incident"] == incident
                    and message["action"] == action
                ):
                    print(
                        f"[reliability] alert delay {incident} {action}: "
                        f"{rec.at - cause_at:.1f} s from cause to delivery"
                    )
                    return message
            time.sleep(0.5)
        raise AssertionError(
            f"no {action} of {incident} within {TRANSITION_SECONDS} s; received "
            f"{[(m['details']['incident'], m['action']) for m in map(_message, self.receiver.accepted())]}"
            f"; daemon log:\n{self.daemon_log.read_text()[-3000:]}"
        )


@pytest.fixture
def daemon(tmp_path):
    """A real dagster-daemon on a temporary instance, the schedule every minute, alerts as JSON."""
    env = instance_env(tmp_path)
    engine = create_app_engine(env["REGULARIZATION_DATABASE_URL"])
    shop = ShopWriter(engine).create()
    migrations.upgrade(engine, "regularization_")
    with ReceivingApp() as receiver:
        env.update(
            {
                SCHEDULE_CRON_ENV: "* * * * *",
                "REGULARIZATION_ALERT_WEBHOOK_URL": receiver.url,
                "REGULARIZATION_ALERT_WEBHOOK_FORMAT": "json",
            }
        )
        log_path = tmp_path / "daemon.log"
        try:
            with running_daemon(env, tmp_path, log_path):
                yield shop, Alerts(receiver, log_path)
        finally:
            engine.dispose()


def _update(shop: ShopWriter, table: sa.Table, key: sa.Column, value, **values) -> None:
    with shop.engine.begin() as conn:
        conn.execute(table.update().where(key == value).values(**values))


def test_alerts_fire_once_and_resolve_through_the_daemon(daemon):
    shop, alerts = daemon
    orders, transactions = shop.tables.orders, shop.tables.transactions
    m, t = shop.mapping.orders, shop.mapping.transactions

    # (1) A paid pending order whose payment does not match its total: held for a human.
    held_at = time.monotonic()
    order = shop.order(total="49.90")
    shop.payment(order, amount="39.90")
    inconsistent = alerts.wait("transactions_inconsistent", "trigger", held_at)
    held = alerts.wait("orders_held", "trigger", held_at)
    assert "1 amount_mismatch" in inconsistent["summary"], inconsistent
    assert f"(order {order})" in held["summary"], held

    # Settled as the runbook says: the order cancelled, its payment refunded.
    settled_at = time.monotonic()
    _update(shop, orders, orders.c[m.id], order, **{m.status: "cancelled"})
    _update(shop, transactions, transactions.c[t.order_id], order, **{t.status: "refunded"})
    alerts.wait("transactions_inconsistent", "resolve", settled_at)
    alerts.wait("orders_held", "resolve", settled_at)

    # (2) The payments table disappears: every run fails until it is back.
    broken_at = time.monotonic()
    with shop.engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE {t.table} RENAME TO {t.table}_moved")
    failed = alerts.wait("run_failed", "trigger", broken_at)
    # The reason an on-call engineer acts on: the step and what it could not find (the name
    # itself behind the one redaction, as any quoted value; the run's page in the UI has it).
    assert (
        "failed: observe_app_orders: table '…' named in the schema mapping does not exist"
        in failed["summary"]
    ), failed
    print(f"[reliability] run_failed reason: {failed['summary']}")

    restored_at = time.monotonic()
    with shop.engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE {t.table}_moved RENAME TO {t.table}")
    alerts.wait("run_failed", "resolve", restored_at)

    # One message per transition: every later tick and run stayed silent about it.
    for incident in ("transactions_inconsistent", "orders_held", "run_failed"):
        assert [a["action"] for a in alerts.of(incident)] == ["trigger", "resolve"], incident
    assert {a["details"]["incident"] for a in map(_message, alerts.receiver.accepted())} == {
        "transactions_inconsistent",
        "orders_held",
        "run_failed",
    }
