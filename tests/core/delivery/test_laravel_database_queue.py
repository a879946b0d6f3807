"""Laravel's database queue: the job row commits with the flip, and a real Illuminate worker runs it.

Against SQLite, PostgreSQL and MariaDB, the shop's ``jobs`` table as Laravel's migration
creates it; the worker is tests/php/laravel_worker.php (Illuminate\\Queue\\Worker).
"""

from __future__ import annotations

import time
from collections import Counter
from decimal import Decimal

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.decisions.context import Fault
from regularization_pipeline.core.delivery.laravel_queue import LaravelDatabaseQueue
from regularization_pipeline.core.delivery.outbox import OutboxDispatcher, RetryPolicy
from regularization_pipeline.core.delivery.publishers import PythonHandlersPublisher
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.tables import DELIVERED, PENDING
from tests.support.laravel import create_jobs_table, require_php, run_database_worker
from tests.support.rows import completed_ids, deliveries, no_sleep, outbox_rows, owned
from tests.support.seeds import seed_events

JOB = "App\\Jobs\\RegularizedOrderCompleted@handle"


def job_rows(engine: sa.Engine, table: str = "jobs") -> list:
    jobs = sa.table(
        table,
        *(sa.column(c) for c in ("id", "queue", "payload", "attempts", "reserved_at")),
        sa.column("available_at"),
        sa.column("created_at"),
    )
    with engine.connect() as conn:
        return conn.execute(sa.select(jobs).order_by(jobs.c.id)).all()


def regularize(shop, publishers, *, mode: str = "per_order", fault=None, limit: int = 100):
    kw = {"fault": fault} if fault else {}
    return Regularizer(shop.engine, shop.schema, sleeper=no_sleep, publishers=publishers, **kw).run(
        RunOptions(sleep=0, limit=limit, mode=mode, batch_size=10)
    )


@pytest.mark.parametrize("mode", ["per_order", "batched"])
def test_each_flipped_order_runs_the_shops_job_class_once_with_its_data(shop, tmp_path, mode):
    require_php()
    create_jobs_table(shop.engine)
    ids = shop.orphans(4)
    before = int(time.time())
    summary = regularize(shop, [LaravelDatabaseQueue(shop.engine)], mode=mode)
    assert summary.regularized == 4

    rows = job_rows(shop.engine)
    assert [(r.queue, r.attempts, r.reserved_at) for r in rows] == [("default", 0, None)] * 4
    assert all(before - 1 <= r.available_at == r.created_at <= time.time() + 1 for r in rows)
    # Delivered by the flip's own commit: nothing left for the dispatcher, whose pass adds no job.
    assert {r.state for r in outbox_rows(shop)} == {DELIVERED}
    dispatcher = OutboxDispatcher(shop.engine, owned(shop), [LaravelDatabaseQueue(shop.engine)])
    assert dispatcher.dispatch().delivered == 0
    assert len(job_rows(shop.engine)) == 4

    runs = run_database_worker(tmp_path, shop.engine)
    events = {r.order_id: r for r in outbox_rows(shop)}
    assert sorted(int(run["data"]["order_id"]) for run in runs) == sorted(ids)
    for run in runs:
        data, event = run["data"], events[run["data"]["order_id"]]
        assert run["name"] == "App\\Jobs\\RegularizedOrderCompleted"
        assert run["attempts"] == 1 and run["uuid"] == event.event_id
        assert data["idempotency_key"] == f"order-completed:{data['order_id']}"
        assert (Decimal(data["amount"]), data["currency"]) == (Decimal("49.90"), "EUR")
        assert data["transaction_id"] is not None
    assert job_rows(shop.engine) == []  # the job deleted itself: no second run
    (tmp_path / "again").mkdir()
    assert run_database_worker(tmp_path / "again", shop.engine) == []


def test_a_rolled_back_flip_leaves_no_job_row(shop, tmp_path):
    require_php()
    create_jobs_table(shop.engine)
    ids = shop.orphans(3)
    doomed = ids[1]

    def crash(point, order_id):
        if point == "before_commit" and order_id == doomed:
            raise Fault("crash before commit")

    regularize(shop, [LaravelDatabaseQueue(shop.engine)], fault=crash)
    assert completed_ids(shop) == {ids[0], ids[2]}
    runs = run_database_worker(tmp_path, shop.engine)
    assert sorted(int(r["data"]["order_id"]) for r in runs) == [ids[0], ids[2]]


def test_configured_table_and_queue_name_reach_the_worker(shop, tmp_path):
    require_php()
    create_jobs_table(shop.engine, "shop_jobs")
    ids = shop.orphans(2)
    queue = LaravelDatabaseQueue(shop.engine, table="shop_jobs", queue="orders")
    regularize(shop, [queue])
    assert {r.queue for r in job_rows(shop.engine, "shop_jobs")} == {"orders"}
    assert run_database_worker(tmp_path, shop.engine, table="shop_jobs", queue="default") == []
    runs = run_database_worker(tmp_path, shop.engine, table="shop_jobs", queue="orders")
    assert sorted(int(r["data"]["order_id"]) for r in runs) == sorted(ids)


def test_alongside_another_publisher_the_outbox_waits_only_for_that_one(shop, tmp_path):
    create_jobs_table(shop.engine)
    shop.orphans(3)
    received = []
    others = PythonHandlersPublisher({"audit": received.append})
    publishers = [LaravelDatabaseQueue(shop.engine), others]
    regularize(shop, publishers)
    assert {r.state for r in outbox_rows(shop)} == {PENDING}
    assert Counter(p for _e, p in deliveries(shop)) == {"laravel-database": 3}

    dispatcher = OutboxDispatcher(shop.engine, owned(shop), publishers, retry=RetryPolicy())
    assert dispatcher.dispatch().delivered == 3
    assert len(received) == 3 and len(job_rows(shop.engine)) == 3  # no second job


def test_events_flipped_without_the_queue_are_enqueued_by_the_dispatcher(shop, tmp_path):
    require_php()
    create_jobs_table(shop.engine)
    rows = seed_events(shop, 2)  # flipped before the publisher was configured
    assert job_rows(shop.engine) == []
    dispatcher = OutboxDispatcher(shop.engine, owned(shop), [LaravelDatabaseQueue(shop.engine)])
    assert dispatcher.dispatch().delivered == 2
    runs = run_database_worker(tmp_path, shop.engine)
    assert sorted(r["uuid"] for r in runs) == sorted(r.event_id for r in rows)


def test_a_missing_jobs_table_is_refused_before_any_flip_in_one_line(shop):
    ids = shop.orphans(2)
    with pytest.raises(ConfigurationError) as refused:
        regularize(shop, [LaravelDatabaseQueue(shop.engine, table="jobs")])
    assert "'jobs' lacks" in str(refused.value) and "\n" not in str(refused.value)
    assert all(shop.status_of(i) == "pending" for i in ids)
    assert outbox_rows(shop) == []
