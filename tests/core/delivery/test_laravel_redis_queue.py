"""Laravel's Redis queue: pushed from the outbox after commit, run by a real Illuminate worker.

Redis on 127.0.0.1:6379; each test uses a prefix of its own, so parallel runs do not meet.
"""

from __future__ import annotations

import json
import uuid

import pytest

from regularization_pipeline.core.delivery.laravel_queue import LaravelRedisQueue
from regularization_pipeline.core.delivery.outbox import OutboxDispatcher, RetryPolicy
from regularization_pipeline.core.delivery.publishers import PublisherSettings, build_publishers
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.shop.tables import DEAD, DELIVERED, PENDING
from tests.support.laravel import REDIS_URL, require_php, require_redis, run_redis_worker
from tests.support.rows import outbox_rows, owned
from tests.support.seeds import seed_events

IMMEDIATE = RetryPolicy(max_attempts=2, base_delay_seconds=0.0, jitter=0.0)


@pytest.fixture
def prefix():
    client = require_redis()
    name = f"regtest_{uuid.uuid4().hex[:12]}_database_"
    yield name
    for key in client.scan_iter(f"{name}*"):
        client.delete(key)


def test_events_pushed_to_laravels_redis_queue_run_the_job_class_once_each(shop, tmp_path, prefix):
    require_php()
    rows = seed_events(shop, 3)
    queue = LaravelRedisQueue(REDIS_URL, prefix=prefix, queue="orders")
    dispatcher = OutboxDispatcher(shop.engine, owned(shop), [queue], retry=IMMEDIATE)
    assert dispatcher.dispatch().delivered == 3
    queue.close()

    client = require_redis()
    # What RedisQueue::pushRaw leaves: the payloads, and one notification per job.
    pushed = [json.loads(p) for p in client.lrange(f"{prefix}queues:orders", 0, -1)]
    assert client.llen(f"{prefix}queues:orders:notify") == 3
    assert [p["uuid"] for p in pushed] == [r.event_id for r in rows]
    assert all(p["attempts"] == 0 and len(p["id"]) == 32 for p in pushed)

    runs = run_redis_worker(tmp_path, prefix, queue="orders")
    assert sorted(r["data"]["order_id"] for r in runs) == sorted(r.order_id for r in rows)
    assert all(r["attempts"] == 1 for r in runs)
    assert {r["data"]["idempotency_key"] for r in runs} == {r.idempotency_key for r in rows}
    assert client.llen(f"{prefix}queues:orders") == 0
    assert {r.state for r in outbox_rows(shop)} == {DELIVERED}


def test_an_unreachable_redis_retries_then_dead_letters_and_redeliver_pushes_again(
    shop, tmp_path, prefix
):
    rows = seed_events(shop, 2)
    down = LaravelRedisQueue("redis://127.0.0.1:1/0", prefix=prefix, socket_timeout_seconds=0.5)
    dispatcher = OutboxDispatcher(shop.engine, owned(shop), [down], retry=IMMEDIATE)
    first = dispatcher.dispatch()
    assert (first.delivered, first.retried) == (0, 2)
    assert {r.state for r in outbox_rows(shop)} == {PENDING}
    assert dispatcher.dispatch().dead == 2
    assert {r.state for r in outbox_rows(shop)} == {DEAD}

    up = LaravelRedisQueue(REDIS_URL, prefix=prefix)
    recovered = OutboxDispatcher(shop.engine, owned(shop), [up], retry=IMMEDIATE)
    assert recovered.redeliver(all_dead=True) == 2
    assert recovered.dispatch().delivered == 2
    assert require_redis().llen(f"{prefix}queues:default") == len(rows)
    up.close()


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"kinds": ["laravel-redis"]}, "laravel_redis_url"),
        ({"kinds": ["laravel-redis"], "laravel_redis_url": "http://x"}, "laravel_redis_url"),
        ({"kinds": ["laravel-database"], "laravel_job_class": "App Jobs; rm"}, "laravel_job_class"),
        ({"kinds": ["laravel-database"], "laravel_jobs_table": "jobs; drop"}, "laravel_jobs_table"),
        ({"kinds": ["laravel-database"], "laravel_queue": ""}, "laravel_queue"),
    ],
)
def test_bad_laravel_settings_are_refused_in_one_line_naming_the_field(settings, named):
    with pytest.raises(ConfigurationError) as refused:
        PublisherSettings.parse(**settings)
    message = str(refused.value)
    assert named in message and "\n" not in message


def test_settings_build_the_queue_with_laravels_default_prefix():
    settings = PublisherSettings.parse(kinds=["laravel-redis"], laravel_redis_url=REDIS_URL)
    (queue,) = build_publishers(settings)
    assert queue.key == "laravel_database_queues:default"
