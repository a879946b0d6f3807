"""The job with the laravel-database publisher: the jobs commit with the flips, the UI says where
events went, and a real Illuminate worker runs one job per regularized order."""

from __future__ import annotations

import dagster as dg
import pytest

from regularization_pipeline.defs.resources import EventPublisherResource
from tests.support.dagster import (
    materialization_metadata,
    materialize_all,
    step_failure_message,
)
from tests.support.laravel import create_jobs_table, require_php, run_database_worker
from tests.support.rows import outbox_states


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def test_the_job_enqueues_laravel_jobs_in_the_flip_and_says_where_they_went(
    shop, db_url, instance, tmp_path
):
    require_php()
    create_jobs_table(shop.engine, "shop_jobs")
    ids = shop.orphans(3)
    publisher = EventPublisherResource(
        publishers=["laravel-database"], laravel_jobs_table="shop_jobs", laravel_queue="orders"
    )
    result = materialize_all(db_url, instance, publisher=publisher, limit=10)
    events = materialization_metadata(result, "order_completed_events")
    assert events["delivered_to"] == (
        "laravel-database (connection database, table shop_jobs, queue orders)"
    )
    assert outbox_states(shop) == {"delivered": 3}
    runs = run_database_worker(tmp_path, shop.engine, table="shop_jobs", queue="orders")
    assert sorted(int(r["data"]["order_id"]) for r in runs) == sorted(ids)


def test_a_bad_laravel_database_setting_fails_the_run_before_any_flip_naming_it(
    shop, db_url, instance
):
    # The job must commit with the flip: without a usable jobs table no order is flipped.
    ids = shop.orphans(2)
    publisher = EventPublisherResource(
        publishers=["laravel-database"], laravel_jobs_table="jobs; drop table orders"
    )
    result = materialize_all(db_url, instance, publisher=publisher, raise_on_error=False)
    assert not result.success
    assert "laravel_jobs_table" in step_failure_message(result, "regularized_orders")
    assert all(shop.status_of(i) == "pending" for i in ids)
