"""Laravel's database queue under races and crashes: no job without its flip, no flip without its
job, no order with two jobs; what the jobs table holds is then run by a real Illuminate worker.

The same scenarios as the outbox (test_races.py, test_crash.py), smaller: late webhooks racing a
run, and the run SIGKILLed at each fault point of the write step, then rerun.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.delivery.laravel_queue import LaravelDatabaseQueue
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from tests.support.laravel import create_jobs_table, require_php, run_database_worker
from tests.support.reliability import figures, url_of
from tests.support.rows import completed_ids, no_sleep, outbox_per_order

pytestmark = pytest.mark.slow

BACKLOG = 300
WEBHOOK_WRITERS = 2


def job_order_ids(engine: sa.Engine) -> Counter:
    jobs = sa.table("jobs", sa.column("payload"))
    with engine.connect() as conn:
        payloads = conn.execute(sa.select(jobs.c.payload)).scalars()
        return Counter(int(json.loads(p)["data"]["order_id"]) for p in payloads)


def assert_one_job_per_flip(shop, tmp_path, by_webhook: set[int] = frozenset()) -> Counter:
    """Every order we flipped has exactly one job and the worker runs it once; no other job exists."""
    events = outbox_per_order(shop, key=int)
    jobs = job_order_ids(shop.engine)
    assert set(jobs) == set(events), "a job without its flip, or a flip without its job"
    assert max(jobs.values(), default=1) == 1, "an order with two jobs"
    assert set(jobs).isdisjoint(by_webhook)
    runs = Counter(int(r["data"]["order_id"]) for r in run_database_worker(tmp_path, shop.engine))
    assert runs == jobs
    return runs


@pytest.mark.parametrize("mode", ["per_order", "batched"])
def test_late_webhooks_racing_a_run_never_get_a_job_and_every_flip_gets_one(
    server_shop, tmp_path, mode
):
    require_php()
    shop = server_shop
    create_jobs_table(shop.engine)
    ids = shop.orphans(BACKLOG)
    late = random.Random(27).sample(ids, BACKLOG // 2)
    orders = shop.tables.orders
    won: set[int] = set()
    start = threading.Barrier(WEBHOOK_WRITERS + 1)
    errors: list[BaseException] = []

    def application_webhooks(share: list[int]) -> None:
        try:
            start.wait()
            for order_id in share:
                for attempt in range(5):  # a deadlocked webhook is retried like any request
                    try:
                        with shop.engine.begin() as conn:
                            if conn.execute(
                                orders.update()
                                .where(orders.c.id == order_id, orders.c.status == "pending")
                                .values(
                                    status="completed",
                                    updated_at=dt.datetime.now(dt.UTC).replace(tzinfo=None),
                                )
                            ).rowcount:
                                won.add(order_id)
                        break
                    except sa.exc.OperationalError:
                        if attempt == 4:
                            raise
                time.sleep(0.004 if mode == "per_order" else 0.0005)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    writers = [
        threading.Thread(target=application_webhooks, args=(late[i::WEBHOOK_WRITERS],))
        for i in range(WEBHOOK_WRITERS)
    ]
    for w in writers:
        w.start()
    start.wait()
    summary = Regularizer(
        shop.engine, shop.schema, sleeper=no_sleep, publishers=[LaravelDatabaseQueue(shop.engine)]
    ).run(RunOptions(mode=mode, sleep=0, limit=10 * BACKLOG, batch_size=25))
    for w in writers:
        w.join(timeout=120)
    assert not errors

    runs = assert_one_job_per_flip(shop, tmp_path, by_webhook=won)
    assert set(runs) | won == set(ids)
    figures(
        f"laravel database queue, late webhooks/{shop.engine.dialect.name}/{mode}",
        orphans=BACKLOG,
        webhook_won=len(won),
        regularized=summary.regularized,
        jobs=sum(runs.values()),
        job_runs_by_worker=sum(runs.values()),
        orders_with_two_jobs=sum(1 for n in runs.values() if n > 1),
    )


CHILD = textwrap.dedent("""
    import os, signal, sys
    from regularization_pipeline.core.delivery.laravel_queue import LaravelDatabaseQueue
    from regularization_pipeline.core.regularizer import Regularizer, RunOptions
    from regularization_pipeline.core.shop.engine import create_app_engine
    from regularization_pipeline.core.shop.binding import bind_schema
    from regularization_pipeline.core.shop.mapping import SchemaMapping

    url, mode, point, victim = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    engine = create_app_engine(url)

    def kill(at, order_id):
        if at == point and int(order_id) == victim:
            os.kill(os.getpid(), signal.SIGKILL)

    Regularizer(engine, bind_schema(engine, SchemaMapping()), fault=kill,
                publishers=[LaravelDatabaseQueue(engine)]).run(
        RunOptions(mode=mode, sleep=0, limit=1000, batch_size=5))
""")

FAULT_POINTS = ("after_flip", "after_outbox", "before_commit")


@pytest.mark.parametrize("mode", ["per_order", "batched"])
@pytest.mark.parametrize("point", FAULT_POINTS)
def test_a_sigkill_at_each_step_of_the_write_leaves_one_job_per_flip_after_the_rerun(
    shop, tmp_path, mode, point
):
    require_php()
    create_jobs_table(shop.engine)
    ids = shop.orphans(12)
    victim = ids[7]
    child = subprocess.run(
        [sys.executable, "-c", CHILD, url_of(shop.engine), mode, point, str(victim)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        check=False,
    )
    assert child.returncode == -9, child.stderr  # killed, not finished
    assert victim not in completed_ids(shop)
    killed_at = {
        "flipped": len(completed_ids(shop)),
        "jobs": sum(job_order_ids(shop.engine).values()),
    }
    assert killed_at["flipped"] == killed_at["jobs"]  # nothing half-written survives the kill

    Regularizer(
        shop.engine, shop.schema, sleeper=no_sleep, publishers=[LaravelDatabaseQueue(shop.engine)]
    ).run(RunOptions(mode=mode, sleep=0, limit=1000, batch_size=5))
    assert completed_ids(shop) == set(ids)
    runs = assert_one_job_per_flip(shop, tmp_path)
    assert runs == Counter(ids)
    figures(
        f"laravel database queue, SIGKILL/{shop.engine.dialect.name}/{mode}/{point}",
        flipped_when_killed=killed_at["flipped"],
        jobs_when_killed=killed_at["jobs"],
        orders=len(ids),
        job_runs_after_rerun=sum(runs.values()),
    )
