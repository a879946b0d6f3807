"""Outbox delivery against real databases and a real receiving app: retries, dead letter, leases, crashes."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.delivery.outbox import OutboxDispatcher, RetryPolicy
from regularization_pipeline.core.delivery.publishers import (
    OutboxOnlyPublisher,
    PythonHandlersPublisher,
)
from regularization_pipeline.core.delivery.webhook import WebhookPublisher
from regularization_pipeline.core.shop.tables import DEAD, DELIVERED, PENDING, owned_tables
from tests.support.http_stubs import ReceivingApp, Reply
from tests.support.rows import deliveries, outbox_rows
from tests.support.seeds import seed_events

SECRET = "whsec_dispatch_0123456789"
IMMEDIATE = RetryPolicy(max_attempts=10, base_delay_seconds=0.0, jitter=0.0)


def webhook(app: ReceivingApp, read_timeout: float = 2.0) -> WebhookPublisher:
    return WebhookPublisher(
        app.url + "/hooks", SECRET, connect_timeout_seconds=0.5, read_timeout_seconds=read_timeout
    )


def drain(dispatcher: OutboxDispatcher, passes: int = 20) -> int:
    """Dispatch pass after pass (each attempts an event at most once) until nothing is pending."""
    for n in range(1, passes + 1):
        dispatcher.dispatch()
        if not [r for r in outbox_rows(dispatcher.engine) if r.state == PENDING]:
            return n
    raise AssertionError("events still pending")


def test_receiver_failing_the_first_deliveries_gets_every_event_exactly_once(shop):
    rows = seed_events(shop, 4)
    script = [
        Reply(503),
        Reply(500),
        Reply(429, headers={"Retry-After": "0"}),
        Reply(408),
        Reply(502),
    ]
    with ReceivingApp(secret=SECRET, script=script) as app:
        dispatcher = OutboxDispatcher(shop.engine, owned(shop), [webhook(app)], retry=IMMEDIATE)
        passes = drain(dispatcher)
        seen = app.snapshot()

    keys = {r.idempotency_key for r in rows}
    assert passes >= 2
    assert app.accepted_per_key() == {k: 1 for k in keys}
    assert len(seen) == 4 + len(script)  # every failure was retried, nothing more
    for key in keys:
        mine = [r for r in seen if r.key == key]
        # Retries carry the same idempotency key and event id; nothing arrives after the 2xx.
        assert len({r.event_id for r in mine}) == 1
        assert mine[-1].status == 200 and all(r.status != 200 for r in mine[:-1])
        assert all(r.signature_ok for r in mine)
    after = outbox_rows(shop.engine)
    assert {r.state for r in after} == {DELIVERED}
    assert sum(r.attempts for r in after) == 4 + len(script)
    assert all(r.lease_owner is None and r.last_error is None for r in after)


def owned(shop):
    return owned_tables(shop.mapping.table_prefix)


def test_backoff_with_jitter_and_retry_after_are_stored_in_next_attempt_at(engine, shop):
    seed_events(shop, 2)
    with ReceivingApp(
        secret=SECRET, script=[Reply(503), Reply(429, headers={"Retry-After": "120"})]
    ) as app:
        policy = RetryPolicy(max_attempts=5, base_delay_seconds=30, jitter=0.2)
        before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        summary = OutboxDispatcher(engine, owned(shop), [webhook(app)], retry=policy).dispatch()
    assert summary.retried == 2 and summary.delivered == 0
    first, second = outbox_rows(engine)
    assert first.state == second.state == PENDING and first.attempts == second.attempts == 1
    delay = (first.next_attempt_at - before).total_seconds()
    assert 24 - 1 <= delay <= 36 + 1, delay  # 30 s +/- 20 % jitter
    assert (
        119 <= (second.next_attempt_at - before).total_seconds() <= 122
    )  # the receiver's Retry-After wins
    assert "HTTP 503" in first.last_error and "HTTP 429" in second.last_error
    # Not due yet: another pass sends nothing.
    assert (
        OutboxDispatcher(engine, owned(shop), [webhook(app)], retry=policy).dispatch().delivered
        == 0
    )


def test_dead_letter_after_max_attempts_then_redelivered_by_the_operator_command(
    shop, monkeypatch, capsys
):
    from regularization_pipeline import cli

    (row,) = seed_events(shop, 1)
    policy = RetryPolicy(max_attempts=3, base_delay_seconds=0.0, jitter=0.0)
    with ReceivingApp(secret=SECRET, script=[Reply(503)] * 3) as app:
        dispatcher = OutboxDispatcher(shop.engine, owned(shop), [webhook(app)], retry=policy)
        for _ in range(5):
            dispatcher.dispatch()
        (dead,) = outbox_rows(shop.engine)
        assert dead.state == DEAD and dead.attempts == 3
        assert dead.last_error.startswith("RetryableDeliveryError: webhook answered HTTP 503")
        assert len(app.snapshot()) == 3  # nothing is sent to a dead event

        monkeypatch.setenv(
            "REGULARIZATION_DATABASE_URL", shop.engine.url.render_as_string(hide_password=False)
        )
        monkeypatch.delenv("REGULARIZATION_SCHEMA_FILE", raising=False)
        assert (
            cli.main(["redeliver", "--all-dead"]) == 0
        )  # regularize-completed-orders redeliver --all-dead
        assert "1 dead event(s) back in the queue" in capsys.readouterr().out
        assert dispatcher.dispatch().delivered == 1
    (delivered,) = outbox_rows(shop.engine)
    assert delivered.state == DELIVERED and delivered.attempts == 1
    assert app.accepted_per_key() == {row.idempotency_key: 1}


def test_permanent_refusal_is_dead_at_once_with_the_status_and_body(shop):
    first, second = seed_events(shop, 2)
    with ReceivingApp(secret=SECRET, script=[Reply(422, b'{"error":"unknown order"}')]) as app:
        dispatcher = OutboxDispatcher(shop.engine, owned(shop), [webhook(app)], retry=IMMEDIATE)
        summary = dispatcher.dispatch()
        assert (summary.dead, summary.delivered) == (1, 1)
        dead = next(r for r in outbox_rows(shop.engine) if r.state == DEAD)
        assert dead.attempts == 1
        assert (
            dead.last_error
            == 'PermanentDeliveryError: webhook answered HTTP 422: {"error":"unknown order"}'
        )
        with pytest.raises(ValueError):
            dispatcher.redeliver()
        assert dispatcher.redeliver(event_ids=[dead.event_id]) == 1
        assert dispatcher.dispatch().delivered == 1
    assert app.accepted_per_key() == {first.idempotency_key: 1, second.idempotency_key: 1}


def test_a_failing_publisher_does_not_rerun_those_that_succeeded(shop):
    (row,) = seed_events(shop, 1)
    calls: list[str] = []
    handlers = {"enroll": lambda e: calls.append(e.idempotency_key)}
    with ReceivingApp(secret=SECRET, script=[Reply(503)]) as app:
        dispatcher = OutboxDispatcher(
            shop.engine,
            owned(shop),
            [PythonHandlersPublisher(handlers), webhook(app)],
            retry=IMMEDIATE,
        )
        first = dispatcher.dispatch()
        assert (first.retried, first.delivered) == (1, 0)
        assert deliveries(shop.engine) == {(row.event_id, "python:enroll")}
        second = dispatcher.dispatch()
        assert second.delivered == 1
    assert calls == [row.idempotency_key]  # the handler ran once, the webhook twice
    assert [r.status for r in app.snapshot()] == [503, 200]
    assert deliveries(shop.engine) == {(row.event_id, "python:enroll"), (row.event_id, "webhook")}


@pytest.mark.parametrize("server_db_url", ["postgresql", "mariadb"], indirect=True)
def test_two_dispatchers_over_the_same_due_events_deliver_each_once(server_shop):
    rows = seed_events(server_shop, 30)
    with ReceivingApp(secret=SECRET, default=Reply(delay=0.01)) as app:
        start = threading.Barrier(2)
        summaries = []

        def run(name: str) -> None:
            dispatcher = OutboxDispatcher(
                server_shop.engine, owned(server_shop), [webhook(app)], owner=name
            )
            start.wait()
            summaries.append(dispatcher.dispatch(batch_size=4))

        threads = [threading.Thread(target=run, args=(f"dispatcher-{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        seen = app.snapshot()
    assert len(seen) == 30  # one request per event: no event was sent twice in one attempt
    assert app.accepted_per_key() == {r.idempotency_key: 1 for r in rows}
    assert sum(s.delivered for s in summaries) == 30
    assert all(s.delivered > 0 for s in summaries), "both dispatchers should have taken a share"
    assert {r.state for r in outbox_rows(server_shop.engine)} == {DELIVERED}


@pytest.mark.parametrize("server_db_url", ["postgresql", "mariadb"], indirect=True)
def test_a_batch_outlasting_its_lease_never_delivers_a_row_taken_over(server_shop):
    """Rows are leased per batch but delivered one by one: each lease is renewed just before its row."""
    seed_events(server_shop, 5)
    calls: list[tuple[str, str]] = []
    lock = threading.Lock()

    def slow(name):
        def handler(event):
            with lock:
                calls.append((name, event.event_id))
            time.sleep(0.6)

        return {"slow": handler}

    # 2 s, not less: MariaDB's DATETIME keeps whole seconds, so a lease can be up to 1 s shorter there.
    a = OutboxDispatcher(
        server_shop.engine,
        owned(server_shop),
        [PythonHandlersPublisher(slow("a"))],
        lease_seconds=2.0,
        owner="a",
    )
    b = OutboxDispatcher(
        server_shop.engine,
        owned(server_shop),
        [PythonHandlersPublisher(slow("b"))],
        lease_seconds=2.0,
        owner="b",
    )
    first = threading.Thread(target=a.dispatch, kwargs={"batch_size": 5})
    first.start()
    time.sleep(2.3)  # a's claim of the whole batch has expired for the rows it has not reached
    b.dispatch(batch_size=5)
    first.join(30)
    per_event: dict[str, int] = {}
    for _name, event_id in calls:
        per_event[event_id] = per_event.get(event_id, 0) + 1
    assert len(per_event) == 5 and set(per_event.values()) == {1}, calls
    assert {name for name, _ in calls} == {"a", "b"}
    assert {r.state for r in outbox_rows(server_shop.engine)} == {DELIVERED}


CRASHING_DISPATCHER = textwrap.dedent("""
    import sys
    from regularization_pipeline.core.shop.engine import create_app_engine
    from regularization_pipeline.core.delivery.webhook import WebhookPublisher
    from regularization_pipeline.core.delivery.outbox import OutboxDispatcher
    from regularization_pipeline.core.shop.tables import owned_tables
    url, hook, secret = sys.argv[1:4]
    pub = WebhookPublisher(hook, secret, connect_timeout_seconds=0.2, read_timeout_seconds=1.0)
    OutboxDispatcher(create_app_engine(url), owned_tables(), [pub], lease_seconds=3.0, owner="doomed").dispatch()
""")


@pytest.mark.parametrize("server_db_url", ["postgresql"], indirect=True)
def test_a_dispatcher_killed_mid_delivery_is_taken_over_after_its_lease(server_db_url, server_shop):
    rows = seed_events(server_shop, 5)
    # The first request hangs (the app is slow); the child is SIGKILLed while it waits for the answer.
    with ReceivingApp(secret=SECRET, script=[Reply(delay=60)]) as app:
        child = subprocess.Popen(
            [sys.executable, "-c", CRASHING_DISPATCHER, server_db_url, app.url + "/hooks", SECRET],
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        try:
            app.wait_for(1, timeout=30)
        finally:
            child.kill()
            child.wait(10)
        assert child.returncode == -9
        leased = outbox_rows(server_shop.engine)
        assert {r.lease_owner for r in leased} == {"doomed"} and {r.state for r in leased} == {
            PENDING
        }

        rescuer = OutboxDispatcher(
            server_shop.engine, owned(server_shop), [webhook(app)], owner="rescuer"
        )
        assert rescuer.dispatch().delivered == 0  # the dead dispatcher's lease still holds
        killed_at = time.monotonic()
        while time.monotonic() - killed_at < 10 and rescuer.dispatch().delivered == 0:
            time.sleep(0.25)
        took_over_after = time.monotonic() - killed_at
        rescuer.dispatch()
        seen = app.snapshot()
    after = outbox_rows(server_shop.engine)
    assert {r.state for r in after} == {DELIVERED}, "no event lost"
    assert app.accepted_per_key() == {r.idempotency_key: 1 for r in rows}
    # The interrupted event was sent again with the same key: at least once, idempotently.
    assert seen[0].key == rows[0].idempotency_key and seen[0].status is None
    assert took_over_after < 5.0
    print(
        f"\n[crash] dispatcher SIGKILLed mid-delivery; events taken over {took_over_after:.2f}s later (lease 3 s)"
    )


@pytest.mark.parametrize("server_db_url", ["postgresql", "mariadb"], indirect=True)
def test_outbox_mode_leaves_rows_for_the_documented_consumer_query(server_shop):
    rows = seed_events(server_shop, 3)
    dispatcher = OutboxDispatcher(server_shop.engine, owned(server_shop), [OutboxOnlyPublisher()])
    assert dispatcher.dispatch().delivered == 0
    assert {r.state for r in outbox_rows(server_shop.engine)} == {PENDING}

    # docs/events.md, "outbox mode": what the application runs.
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with server_shop.engine.begin() as conn:
        batch = conn.execute(
            sa.text(
                "SELECT id, event_id, idempotency_key, payload FROM regularization_outbox "
                "WHERE state = 'pending' AND next_attempt_at <= :now "
                "ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED"
            ),
            {"now": now},
        ).all()
        assert [r.idempotency_key for r in batch] == [r.idempotency_key for r in rows]
        conn.execute(
            sa.text(
                "UPDATE regularization_outbox SET state = 'delivered', delivered_at = :now, updated_at = :now, "
                "attempts = attempts + 1 WHERE id = :id AND state = 'pending'"
            ),
            [{"now": now, "id": r.id} for r in batch],
        )
    assert {r.state for r in outbox_rows(server_shop.engine)} == {DELIVERED}


def test_a_slow_python_handler_does_not_let_another_dispatcher_take_the_event_over(shop):
    """Handlers declare no worst-case time: the lease is renewed between them, not only per event."""
    seed_events(shop, 1)
    calls: dict[str, int] = {"slow": 0, "next": 0}
    taken_over = []

    def slow(_event):
        calls["slow"] += 1
        time.sleep(1.3)  # longer than the whole lease

    def after_slow(_event):
        calls["next"] += 1
        # A second dispatcher polls now: the event's lease must still be held.
        taken_over.append(other.dispatch().delivered)

    handlers = PythonHandlersPublisher({"a_slow": slow, "b_next": after_slow})
    first = OutboxDispatcher(
        shop.engine, owned(shop), [handlers], retry=IMMEDIATE, lease_seconds=1.0, owner="first"
    )
    other = OutboxDispatcher(
        shop.engine, owned(shop), [handlers], retry=IMMEDIATE, lease_seconds=1.0, owner="other"
    )

    summary = first.dispatch()

    assert taken_over == [0] and calls == {"slow": 1, "next": 1}
    assert summary.delivered == 1 and [r.state for r in outbox_rows(shop.engine)] == [DELIVERED]


def test_a_retry_after_longer_than_the_configured_maximum_is_capped_by_it(engine, shop):
    """Before issue 25, 'Retry-After: 99999' parked the event for a day despite max_delay_seconds."""
    seed_events(shop, 1)
    with ReceivingApp(secret=SECRET, script=[Reply(503, headers={"Retry-After": "99999"})]) as app:
        policy = RetryPolicy(max_attempts=5, base_delay_seconds=30, max_delay_seconds=600)
        before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        summary = OutboxDispatcher(engine, owned(shop), [webhook(app)], retry=policy).dispatch()
    assert summary.retried == 1
    (row,) = outbox_rows(engine)
    assert 599 <= (row.next_attempt_at - before).total_seconds() <= 602


@pytest.mark.parametrize("payload", ["{not json", "[1, 2]", '{"order_id": "7"}'])
def test_a_corrupt_payload_is_dead_lettered_alone_and_the_rows_after_it_are_delivered(
    shop, payload
):
    first, corrupt, last = seed_events(shop, 3)
    ob = owned(shop).outbox
    with shop.engine.begin() as conn:
        conn.execute(ob.update().where(ob.c.id == corrupt.id).values(payload=payload))
    with ReceivingApp(secret=SECRET) as app:
        dispatcher = OutboxDispatcher(shop.engine, owned(shop), [webhook(app)], retry=IMMEDIATE)
        summary = dispatcher.dispatch()
        again = dispatcher.dispatch()
        received = app.accepted_per_key()

    assert received == {first.idempotency_key: 1, last.idempotency_key: 1}
    assert (summary.delivered, summary.dead, summary.retried) == (2, 1, 0)
    assert (again.delivered, again.dead, again.retried) == (0, 0, 0)
    states = {r.id: (r.state, r.last_error) for r in outbox_rows(shop.engine)}
    assert states[first.id] == states[last.id] == (DELIVERED, None)
    assert states[corrupt.id][0] == DEAD
    assert states[corrupt.id][1].startswith("CorruptPayloadError: the outbox row's payload is not")
