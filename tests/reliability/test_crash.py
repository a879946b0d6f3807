"""Crash anywhere: the run process SIGKILLed at seeded random instants, then a rerun (PostgreSQL, MariaDB).

The child process runs what a Dagster run does in core: Regularizer.run, then the outbox
dispatch to a consumer that records each delivery it receives. Some of its orders fail on
purpose (so attempts are being counted when the kill lands) and a few are inconsistent.
After each kill a rerun (run + dispatch with a short lease) must leave: every orphan
completed, one event each, every event delivered, and attempts equal to the audit's count.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.delivery.outbox import OutboxDispatcher, RetryPolicy
from regularization_pipeline.core.delivery.publishers import PythonHandlersPublisher
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.tables import DELIVERED, owned_tables
from tests.support.reliability import figures, url_of
from tests.support.rows import assert_flip_iff_event, completed_ids, no_sleep

pytestmark = pytest.mark.slow

TRIALS = 20
ORPHANS_PER_TRIAL = 100
LEASE_SECONDS = 0.5
FAILING_EVERY = 37  # orders whose id is a multiple of this fail inside the killed run

CHILD = textwrap.dedent(f"""
    import sys
    import sqlalchemy as sa
    from regularization_pipeline.core.shop.engine import create_app_engine
    from regularization_pipeline.core.delivery.publishers import PythonHandlersPublisher
    from regularization_pipeline.core.delivery.outbox import OutboxDispatcher, RetryPolicy
    from regularization_pipeline.core.regularizer import Regularizer, RunOptions
    from regularization_pipeline.core.shop.binding import bind_schema
    from regularization_pipeline.core.shop.mapping import SchemaMapping
    from regularization_pipeline.core.shop.tables import owned_tables

    url, mode = sys.argv[1:3]
    engine = create_app_engine(url)
    receipts = sa.table("consumer_receipts", sa.column("idempotency_key"), sa.column("event_id"), sa.column("receiver"))

    def flaky(point, order_id):
        if point == "after_flip" and int(order_id) % {FAILING_EVERY} == 0:
            raise RuntimeError("injected failure")

    def consumer(event):
        with engine.begin() as conn:
            conn.execute(receipts.insert().values(idempotency_key=event.idempotency_key, event_id=event.event_id,
                                                  receiver="killed-run"))

    regularizer = Regularizer(engine, bind_schema(engine, SchemaMapping()), fault=flaky)
    dispatcher = OutboxDispatcher(engine, owned_tables(), [PythonHandlersPublisher({{"consumer": consumer}})],
                                  retry=RetryPolicy(base_delay_seconds=0.0, jitter=0.0), lease_seconds={LEASE_SECONDS})
    engine.connect().close()
    print("ready", flush=True)
    regularizer.run(RunOptions(mode=mode, sleep=0, limit=100000, batch_size=25, max_attempts=1000))
    dispatcher.dispatch(batch_size=20)
""")


def receipts_table(engine: sa.Engine) -> sa.Table:
    md = sa.MetaData()
    table = sa.Table(
        "consumer_receipts",
        md,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("receiver", sa.String(32), nullable=False),
    )
    md.create_all(engine)
    return table


def start_child(url: str, mode: str) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, mode],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert child.stdout.readline().strip() == "ready"
    return child


def rerun_and_drain(shop, receipts: sa.Table) -> tuple[float, int]:
    """What the next scheduled run does: regularize, then dispatch until nothing is pending."""

    def consumer(event):
        with shop.engine.begin() as conn:
            conn.execute(
                receipts.insert().values(
                    idempotency_key=event.idempotency_key, event_id=event.event_id, receiver="rerun"
                )
            )

    began = time.monotonic()
    Regularizer(shop.engine, shop.schema, sleeper=no_sleep).run(
        RunOptions(sleep=0, limit=100000, max_attempts=1000)
    )
    dispatcher = OutboxDispatcher(
        shop.engine,
        owned_tables(),
        [PythonHandlersPublisher({"consumer": consumer})],
        retry=RetryPolicy(base_delay_seconds=0.0, jitter=0.0),
        lease_seconds=LEASE_SECONDS,
    )
    ob = owned_tables().outbox
    passes = 0
    while time.monotonic() - began < 30:
        dispatcher.dispatch(batch_size=50)
        passes += 1
        with shop.engine.connect() as conn:
            left = conn.execute(
                sa.select(sa.func.count()).select_from(ob).where(ob.c.state != DELIVERED)
            ).scalar_one()
        if not left:
            break
        time.sleep(0.2)  # the killed dispatcher's lease must expire first
    return time.monotonic() - began, passes


def check_invariants(
    shop, orphans: list[int], mismatches: list[int], receipts: sa.Table
) -> Counter:
    tables = owned_tables()
    ob, au, at = tables.outbox, tables.audit, tables.attempts
    assert set(orphans) <= completed_ids(shop), "an orphan was lost"
    assert not set(mismatches) & completed_ids(shop), "an inconsistent order was flipped"
    assert_flip_iff_event(shop)  # one event per flipped order, no flip without its event
    with shop.engine.connect() as conn:
        states = Counter(conn.execute(sa.select(ob.c.state)).scalars())
        assert set(states) == {DELIVERED}, f"events left undelivered after a dispatch: {states}"
        keys = set(conn.execute(sa.select(ob.c.idempotency_key)).scalars())
        received = Counter(conn.execute(sa.select(receipts.c.idempotency_key)).scalars())
        assert set(received) == keys, "an event was never received by the consumer"
        # No attempt counted twice (nor lost): each counted attempt is exactly one audited decision.
        counted = dict(conn.execute(sa.select(at.c.order_id, at.c.total_attempts)).all())
        audited = dict(
            conn.execute(
                sa.select(au.c.order_id, sa.func.count())
                .where(
                    au.c.order_id.in_(list(counted)),
                    au.c.action.in_(["failed", "quarantined", "inconsistent", "regularized"]),
                )
                .group_by(au.c.order_id)
            ).all()
        )
    assert counted == audited
    return received


def test_run_process_killed_at_random_instants_loses_and_duplicates_nothing(server_shop):
    shop = server_shop
    receipts = receipts_table(shop.engine)
    url = url_of(shop.engine)
    rng = random.Random(20260107)
    orphans: list[int] = []
    mismatches: list[int] = []

    def seed() -> None:
        orphans.extend(shop.orphans(ORPHANS_PER_TRIAL))
        for _ in range(2):
            order_id = shop.order(total="10.00")
            shop.payment(order_id, amount="12.00")
            mismatches.append(order_id)

    # Calibrate: how long an unkilled child of each mode works over one trial's backlog, so kills land inside it.
    span = {}
    for mode in ("per_order", "batched"):
        seed()
        child = start_child(url, mode)
        began = time.monotonic()
        assert child.wait(120) == 0
        span[mode] = time.monotonic() - began
        rerun_and_drain(shop, receipts)  # the orders it failed on purpose
        check_invariants(shop, orphans, mismatches, receipts)

    # Keep killing until TRIALS kills landed mid-work; a child that finished first shortens its mode's window.
    trials: list[dict] = []
    while sum(t["killed"] for t in trials) < TRIALS and len(trials) < TRIALS + 10:
        seed()
        mode = "per_order" if len(trials) % 2 == 0 else "batched"
        delay = rng.uniform(0.0, span[mode])
        child = start_child(url, mode)
        time.sleep(delay)
        child.kill()
        code = child.wait(30)
        assert code in (-9, 0)
        if code == 0:
            span[mode] *= 0.7
        before = len(set(orphans) & completed_ids(shop))
        with shop.engine.connect() as conn:
            delivered_before = conn.execute(
                sa.select(sa.func.count())
                .select_from(owned_tables().outbox)
                .where(owned_tables().outbox.c.state == DELIVERED)
            ).scalar_one()
        seconds, passes = rerun_and_drain(shop, receipts)
        received = check_invariants(shop, orphans, mismatches, receipts)
        trials.append(
            dict(
                mode=mode,
                delay=round(delay, 3),
                killed=code == -9,
                completed_before=before,
                delivered_before=delivered_before,
                rerun_seconds=round(seconds, 2),
                passes=passes,
            )
        )

    redelivered = sum(1 for n in received.values() if n > 1)
    killed = sum(t["killed"] for t in trials)
    figures(
        f"crash anywhere/{shop.engine.dialect.name}",
        attempts=len(trials),
        killed_mid_work=killed,
        finished_before_kill=len(trials) - killed,
        child_work_seconds={m: round(v, 2) for m, v in span.items()},
        orphans=len(orphans),
        events=len(received),
        redelivered_same_key=redelivered,
        lost=0,
        duplicate_events=0,
        attempts_counted_twice=0,
        max_rerun_seconds=max(t["rerun_seconds"] for t in trials),
    )
    for t in trials:
        print("   ", t)
    # The kills must really land mid-work, or this proves nothing.
    assert killed == TRIALS
