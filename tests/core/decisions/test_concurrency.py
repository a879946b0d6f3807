"""Exactly one flip and exactly one OrderCompleted outbox row per order, whatever runs at once:
many threads, several processes with their own engines, and the application's own webhook.

The runs here skip the shop's run lock (``exclusive=False``), as a run launched around it would:
the row locks and the compare-and-set beneath it hold on their own."""

import multiprocessing
import random
import threading
from collections import Counter

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.errors import is_deadlock
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.binding import bind_schema
from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.core.shop.mapping import SchemaMapping
from regularization_pipeline.core.verdicts import REGULARIZED
from tests.support.rows import attempts_of, audit_per_order, no_sleep, outbox_per_order

THREADS = 20


@pytest.fixture(params=["per_order", "batched"])
def options(request) -> RunOptions:
    """Small pages and batches, so the runs keep re-reading candidates while the others flip them."""
    return RunOptions(mode=request.param, sleep=0, batch_size=4, limit=1000)


def run_in_threads(count: int, target) -> list:
    """Start ``count`` threads at the same instant; return what each returned, re-raising any error."""
    barrier = threading.Barrier(count)
    results: list = [None] * count
    errors: list = []

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a run hung"
    if errors:
        raise errors[0]
    return results


def assert_exactly_once(shop, ids, regularized_total: int) -> None:
    assert [shop.status_of(i) for i in ids] == ["completed"] * len(ids)
    assert outbox_per_order(shop) == {str(i): 1 for i in ids}
    assert audit_per_order(shop, REGULARIZED) == {str(i): 1 for i in ids}
    assert regularized_total == len(ids)


def test_twenty_overlapping_runs_flip_each_order_once(shop, options):
    """All three backends: row locks with SKIP LOCKED on the servers, BEGIN IMMEDIATE on SQLite."""
    ids = shop.orphans(30)
    mismatch = shop.order(total="1.00")  # overlapping runs also meet a new inconsistency together
    shop.payment(mismatch, amount="2.00")
    summaries = run_in_threads(
        THREADS,
        lambda _i: Regularizer(shop.engine, shop.schema, sleeper=no_sleep, exclusive=False).run(
            options
        ),
    )
    assert_exactly_once(shop, ids, sum(s.regularized for s in summaries))
    assert sum(s.failed for s in summaries) == 0
    assert shop.status_of(mismatch) == "pending"


def _process_run(url: str, options: RunOptions, start, results) -> None:
    engine = create_app_engine(url)
    try:
        regularizer = Regularizer(
            engine, bind_schema(engine, SchemaMapping()), sleeper=no_sleep, exclusive=False
        )
        start.wait(timeout=60)
        summary = regularizer.run(options)
        results.put((summary.regularized, summary.failed))
    except BaseException as exc:  # noqa: BLE001 - the parent asserts on what was put
        results.put(("error", repr(exc)))
    finally:
        engine.dispose()


def test_runs_in_separate_processes_flip_each_order_once(server_shop, options):
    ids = server_shop.orphans(40)
    url = server_shop.engine.url.render_as_string(hide_password=False)
    server_shop.engine.dispose()  # no pooled connection is shared with the children
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Barrier(4), ctx.Queue()
    procs = [
        ctx.Process(target=_process_run, args=(url, options, start, results)) for _ in range(4)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert all(p.exitcode == 0 for p in procs)
    assert all(o[0] != "error" for o in outcomes), outcomes
    assert sum(o[1] for o in outcomes) == 0
    assert_exactly_once(server_shop, ids, sum(o[0] for o in outcomes))


def test_late_webhooks_racing_the_runs_never_get_a_second_event(server_shop, options):
    """The application completes orders while runs regularize them: each order is completed by exactly
    one of the two, and only the ones we completed have an OrderCompleted outbox row."""
    shop = server_shop
    ids = shop.orphans(60)
    orders = shop.tables.orders
    won_by_webhook: list = []

    def webhook(_i):
        # The application's handler: a compare-and-set of its own, in random arrival order.
        for order_id in random.Random(11).sample(ids, len(ids)):
            for attempt in range(5):
                try:
                    with shop.engine.begin() as conn:
                        done = conn.execute(
                            orders.update()
                            .where(orders.c.id == order_id, orders.c.status == "pending")
                            .values(status="completed")
                        ).rowcount
                    break
                except sa.exc.OperationalError as exc:
                    # MariaDB may run this UPDATE through the (status, id) index, locking
                    # it before the row, the reverse of a run's order: the application
                    # retries a deadlock victim, as InnoDB asks of every client.
                    if not is_deadlock(exc) or attempt == 4:
                        raise
            if done:
                won_by_webhook.append(order_id)

    def work(i):
        if i == 0:
            return webhook(i)
        return Regularizer(shop.engine, shop.schema, sleeper=no_sleep, exclusive=False).run(options)

    summaries = [s for s in run_in_threads(5, work) if s is not None]
    ours = {int(k) for k in outbox_per_order(shop)}
    assert [shop.status_of(i) for i in ids] == ["completed"] * len(ids)
    assert not ours & set(won_by_webhook)
    assert ours | set(won_by_webhook) == set(ids)
    assert Counter(outbox_per_order(shop).values()) <= Counter({1: len(ids)})
    assert audit_per_order(shop, REGULARIZED) == {str(i): 1 for i in ours}
    assert sum(s.regularized for s in summaries) == len(ours)
    assert sum(s.failed for s in summaries) == 0


@pytest.mark.parametrize("point", ["after_lock", "after_flip"])
def test_a_run_crashing_while_others_run_loses_no_event(server_shop, point, options):
    """One of the overlapping runs crashes inside every order it claims; the others still do each
    order exactly once, and nothing the crashed one touched survives."""
    shop = server_shop
    ids = shop.orphans(20)

    def crash(at, _order_id):
        if at == point:
            raise RuntimeError("crash")

    def work(i):
        fault = crash if i == 0 else (lambda _at, _oid: None)
        return Regularizer(
            shop.engine, shop.schema, sleeper=no_sleep, fault=fault, exclusive=False
        ).run(options)

    summaries = run_in_threads(6, work)
    # Failures only ever come from the crashing run; whatever it failed, a later run picks up.
    assert sum(s.failed for s in summaries[1:]) == 0
    Regularizer(shop.engine, shop.schema, sleeper=no_sleep).run(options)
    assert [shop.status_of(i) for i in ids] == ["completed"] * len(ids)
    assert outbox_per_order(shop) == {str(i): 1 for i in ids}
    assert audit_per_order(shop, REGULARIZED) == {str(i): 1 for i in ids}


def test_failures_of_one_order_in_overlapping_runs_are_all_counted(shop):
    """Failures are counted per order across runs, also when the runs overlap: every failure is
    in order_attempts and audited, none is lost to two workers creating the same attempts row."""
    order_id = shop.orphan()

    def crash(at, _order_id):
        if at == "before_claim":
            raise RuntimeError("provider unreachable")

    regularizer = Regularizer(shop.engine, shop.schema, sleeper=no_sleep, fault=crash)
    options = RunOptions(sleep=0, max_attempts=1000)
    outcomes = run_in_threads(
        10, lambda i: regularizer.regularize_one(order_id, f"run-{i}", options)
    )
    assert [o.action for o in outcomes] == ["failed"] * 10
    assert attempts_of(shop, order_id).failures == 10
    assert audit_per_order(shop, "failed") == {str(order_id): 10}
    assert outbox_per_order(shop) == {}
