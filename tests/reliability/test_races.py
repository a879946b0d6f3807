"""Production-sized races on PostgreSQL and MariaDB: late webhooks during a run, and forced overlap.

tests/core/decisions/test_concurrency.py proves the same guarantees on tens of orders; these run them on
thousands, with the application's webhook writing its own completion marker, and time
the overlap against a single run.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import random
import threading
import time

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.decisions.context import LOCKED_ELSEWHERE
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.binding import bind_schema
from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.core.shop.mapping import SchemaMapping
from regularization_pipeline.core.verdicts import REGULARIZED, SKIPPED
from tests.support.reliability import figures, url_of
from tests.support.rows import (
    OutcomeLog,
    assert_flip_iff_event,
    audit_rows,
    completed_ids,
    no_sleep,
    outbox_per_order,
)

pytestmark = pytest.mark.slow

BACKLOG = 2000
WEBHOOK_WRITERS = 4


def webhook_table(engine: sa.Engine) -> sa.Table:
    """The application's own record that its webhook completed an order (the marker we must never contradict)."""
    md = sa.MetaData()
    table = sa.Table(
        "webhook_completions",
        md,
        sa.Column("order_id", sa.BigInteger, primary_key=True),
        sa.Column("completed_at", sa.DateTime, nullable=False),
    )
    md.create_all(engine)
    return table


@pytest.mark.parametrize("mode", ["per_order", "batched"])
def test_late_webhooks_racing_a_run_over_two_thousand_orphans(server_shop, mode):
    shop = server_shop
    ids = shop.orphans(BACKLOG)
    markers = webhook_table(shop.engine)
    late = random.Random(2024).sample(ids, BACKLOG // 2)  # the webhooks that finally arrive
    orders = shop.tables.orders
    start = threading.Barrier(WEBHOOK_WRITERS + 1)
    retried: list[int] = []
    # Spread the webhooks over the run's duration, so they meet it everywhere, not only at the start.
    pace = 0.006 if mode == "per_order" else 0.0008

    def application_webhooks(share: list[int]) -> None:
        start.wait()
        for order_id in share:
            for attempt in range(
                5
            ):  # the application retries a deadlocked webhook like any request
                try:
                    with shop.engine.begin() as conn:
                        won = conn.execute(
                            orders.update()
                            .where(orders.c.id == order_id, orders.c.status == "pending")
                            .values(
                                status="completed",
                                updated_at=dt.datetime.now(dt.UTC).replace(tzinfo=None),
                            )
                        ).rowcount
                        if won:
                            conn.execute(
                                markers.insert().values(
                                    order_id=order_id, completed_at=dt.datetime(2026, 1, 1)
                                )
                            )
                    break
                except sa.exc.OperationalError:
                    retried.append(order_id)
                    if attempt == 4:
                        raise
            time.sleep(pace)

    errors: list[BaseException] = []

    def guarded(share):
        try:
            application_webhooks(share)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    writers = [
        threading.Thread(target=guarded, args=(late[i::WEBHOOK_WRITERS],))
        for i in range(WEBHOOK_WRITERS)
    ]
    for w in writers:
        w.start()
    start.wait()
    began = time.monotonic()
    outcomes = OutcomeLog()
    summary = Regularizer(shop.engine, shop.schema, sleeper=no_sleep).run(
        RunOptions(mode=mode, sleep=0, limit=10 * BACKLOG, batch_size=50), progress=outcomes
    )
    run_seconds = time.monotonic() - began
    for w in writers:
        w.join(timeout=120)
    webhook_seconds = time.monotonic() - began
    assert not errors, errors

    with shop.engine.connect() as conn:
        by_webhook = set(conn.execute(sa.select(markers.c.order_id)).scalars())
    events = outbox_per_order(shop.engine, key=int)
    flipped_by_run = {o.order_id for o in outcomes if o.action == REGULARIZED}

    # Every order completed exactly once: by the webhook (marker) or by us (one event), never both.
    assert completed_ids(shop) == set(ids)
    assert set(events.values()) == {1}
    assert set(events).isdisjoint(by_webhook)
    assert set(events) | by_webhook == set(ids)
    assert by_webhook <= set(late)
    # One OrderCompleted for each order the pipeline flipped, none for the others.
    assert set(events) == flipped_by_run
    assert summary.regularized == len(flipped_by_run) == len(events)
    assert summary.failed == 0
    # Every order the run touched is explained by the audit; a lock held by the webhook is not a decision.
    audited = [r for r in audit_rows(shop.engine) if r.run_id == summary.run_id]
    decided = [o for o in outcomes if o.acted]
    assert sorted(int(r.order_id) for r in audited) == sorted(o.order_id for o in decided)
    assert {int(r.order_id) for r in audited if r.action == REGULARIZED} == flipped_by_run
    assert {r.action for r in audited} <= {REGULARIZED, SKIPPED}
    skipped = [r for r in audited if r.action == SKIPPED]
    assert {int(r.order_id) for r in skipped} <= by_webhook
    assert all(
        "already completed" in r.reason or "changed before the flip" in r.reason for r in skipped
    )
    locked = [o for o in outcomes if o.reason == LOCKED_ELSEWHERE]
    assert {o.order_id for o in locked} <= by_webhook

    figures(
        f"late webhooks/{shop.engine.dialect.name}/{mode}",
        orphans=BACKLOG,
        webhooks_sent=len(late),
        webhook_won=len(by_webhook),
        run_flipped=len(flipped_by_run),
        run_found_completed=len(skipped),
        run_skipped_locked=len(locked),
        webhook_retries=len(retried),
        run_seconds=round(run_seconds, 2),
        webhooks_seconds=round(webhook_seconds, 2),
        double_completions=0,
        lost=0,
    )


# --- forced overlap ---------------------------------------------------------------------------

OVERLAP_BACKLOG = 3000
OVERLAP_RUNS = 4


def _timed_run(url: str, start, results) -> None:
    engine = create_app_engine(url)
    try:
        regularizer = Regularizer(
            engine, bind_schema(engine, SchemaMapping()), sleeper=no_sleep, exclusive=False
        )
        engine.connect().close()  # connected before the start, like the single run
        start.wait(timeout=60)
        outcomes = OutcomeLog()
        summary = regularizer.run(
            RunOptions(mode="batched", sleep=0, limit=10 * OVERLAP_BACKLOG, batch_size=50),
            progress=outcomes,
        )
        results.put(
            (
                summary.regularized,
                summary.failed,
                [o.order_id for o in outcomes if o.action == REGULARIZED],
            )
        )
    except BaseException as exc:  # noqa: BLE001 - the parent asserts on what was put
        results.put(("error", repr(exc), []))
    finally:
        engine.dispose()


def _runs_over_fresh_backlog(shop, processes: int) -> tuple[float, list[int], list]:
    """Seed a backlog, start ``processes`` runs at one instant, return (wall seconds, the backlog, outcomes)."""
    ids = shop.orphans(OVERLAP_BACKLOG)
    url = url_of(shop.engine)
    shop.engine.dispose()  # no pooled connection is shared with the children
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Barrier(processes + 1), ctx.Queue()
    procs = [ctx.Process(target=_timed_run, args=(url, start, results)) for _ in range(processes)]
    for p in procs:
        p.start()
    start.wait(timeout=60)
    began = time.monotonic()
    outcomes = [results.get(timeout=300) for _ in procs]
    wall = time.monotonic() - began
    for p in procs:
        p.join(timeout=30)
    assert all(p.exitcode == 0 for p in procs)
    assert all(o[0] != "error" for o in outcomes), outcomes
    return wall, ids, outcomes


def test_four_overlapping_runs_flip_each_order_once_and_finish_sooner(server_shop):
    shop = server_shop
    # Best of two for each shape: two cores are shared with the database server and other work.
    singles, overlaps = [], []
    for _ in range(2):
        wall, ids, outcomes = _runs_over_fresh_backlog(shop, 1)
        assert outcomes[0][:2] == (OVERLAP_BACKLOG, 0)
        singles.append(wall)
        wall, ids, outcomes = _runs_over_fresh_backlog(shop, OVERLAP_RUNS)
        flipped = [order_id for o in outcomes for order_id in o[2]]
        # Each orphan flipped once, by exactly one of the four runs, with one event.
        assert sorted(flipped) == sorted(ids)
        assert sum(o[1] for o in outcomes) == 0
        overlaps.append(wall)
        shares = sorted(o[0] for o in outcomes)
    events = outbox_per_order(shop.engine, key=int)
    assert len(events) == 4 * OVERLAP_BACKLOG and set(events.values()) == {1}
    assert_flip_iff_event(shop)
    single, overlap = min(singles), min(overlaps)
    figures(
        f"forced overlap/{shop.engine.dialect.name}",
        backlog=OVERLAP_BACKLOG,
        runs=OVERLAP_RUNS,
        single_run_seconds=[round(s, 2) for s in singles],
        four_runs_seconds=[round(s, 2) for s in overlaps],
        speedup=round(single / overlap, 2),
        orders_per_run_last=shares,
        duplicates=0,
        lost=0,
    )
    # The speed-up is a figure, printed above and kept in docs/dev/reliability.md, not an
    # assertion: on two shared cores it moved with whatever else ran (speed targets
    # belong to bench/, never to a timed test).


JOB_OVERLAP_BACKLOG = 1000


def _job_run(url: str, start, results) -> None:
    """One run of the job's whole selection (observation, checks, the three assets), as a Dagster run."""
    import dagster as dg

    from tests.support.dagster import materialization_metadata, materialize_all

    try:
        with dg.instance_for_test() as instance:
            start.wait(timeout=120)
            result = materialize_all(url, instance, limit=100000, batch_size=100)
            metrics = materialization_metadata(result, "regularized_orders")
            results.put((True, int(metrics["regularized"]), int(metrics["failed"]), ""))
    except dg.Failure as exc:  # the shop's run lock, held by another of the four
        results.put(("busy", 0, 0, exc.description or ""))
    except BaseException as exc:  # noqa: BLE001 - the parent asserts on what was put
        results.put(("error", repr(exc), 0, ""))


def test_four_runs_of_the_job_at_once_with_the_limit_bypassed_flip_each_order_once(server_shop):
    """Dagster's limits bypassed: four runs of the job, each on an instance of its own (as four code
    locations would be), over one backlog. The shop's run lock lets one act; the others fail busy,
    having changed nothing."""
    shop = server_shop
    ids = shop.orphans(JOB_OVERLAP_BACKLOG)
    url = url_of(shop.engine)
    shop.engine.dispose()  # no pooled connection is shared with the children
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Barrier(OVERLAP_RUNS + 1), ctx.Queue()
    procs = [ctx.Process(target=_job_run, args=(url, start, results)) for _ in range(OVERLAP_RUNS)]
    for p in procs:
        p.start()
    start.wait(timeout=120)
    outcomes = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)

    assert all(o[0] is True or o[0] == "busy" for o in outcomes), outcomes
    assert [o for o in outcomes if o[0] is True], outcomes
    assert all("busy: run " in o[3] for o in outcomes if o[0] == "busy"), outcomes
    assert sum(o[1] for o in outcomes) == len(ids) and sum(o[2] for o in outcomes) == 0
    assert set(ids) <= completed_ids(shop)
    events = outbox_per_order(shop.engine, key=int)
    assert len(events) == len(ids) and set(events.values()) == {1}
    assert_flip_iff_event(shop)
    figures(
        f"forced overlap, the job/{shop.engine.dialect.name}",
        backlog=len(ids),
        runs=OVERLAP_RUNS,
        regularized_per_run=sorted(o[1] for o in outcomes),
        refused_busy=sum(o[0] == "busy" for o in outcomes),
        duplicates=0,
        lost=0,
    )
