"""Delivery on its own: the delivery job and its schedule deliver what waits in the outbox while
the fix step keeps failing, exactly once, on real databases and to a real receiver."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.definitions import defs
from regularization_pipeline.defs import delivery_jobs, jobs
from regularization_pipeline.defs.resources import (
    AppDatabaseResource,
    EventPublisherResource,
    PaymentGatewayResource,
)
from tests.dagster.test_automation import run_with_status
from tests.support.dagster import ALL_ASSETS, ALL_CHECKS, materialize_all, resources
from tests.support.http_stubs import ReceivingApp
from tests.support.rows import outbox_states
from tests.support.seeds import seed_events

SECRET = "a-webhook-secret-for-tests-only"
TICK = dt.datetime(2030, 1, 1, 12, 1, tzinfo=dt.UTC)


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def tick(instance, db_url: str):
    with dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=TICK,
        resources={"app_db": AppDatabaseResource(url=db_url)},
    ) as context:
        return delivery_jobs.deliver_order_completed_events_every_minute.evaluate_tick(context)


def run_delivery_job(instance, db_url: str, publisher: EventPublisherResource):
    job_defs = dg.Definitions(
        assets=ALL_ASSETS,
        asset_checks=ALL_CHECKS,
        jobs=[delivery_jobs.deliver_order_completed_events],
        resources=resources(db_url, publisher),
    )
    return job_defs.resolve_job_def(delivery_jobs.DELIVERY_JOB_NAME).execute_in_process(
        instance=instance
    )


def test_events_waiting_are_delivered_once_while_the_fix_step_fails(shop, db_url, instance):
    waiting = seed_events(shop, 2)  # written by an earlier run, not delivered yet
    shop.orphans(1)
    # Verification on, its token missing: the fix step fails before touching an order.
    no_token = PaymentGatewayResource(base_url="http://127.0.0.1:9/payments")
    with ReceivingApp(secret=SECRET) as receiver:
        publisher = EventPublisherResource(
            publishers=["webhook"], webhook_url=receiver.url + "/hooks", webhook_secret=SECRET
        )
        fix = materialize_all(
            db_url, instance, raise_on_error=False, publisher=publisher, gateway=no_token
        )
        assert not fix.success
        assert [e.step_key for e in fix.get_step_failure_events()] == ["regularized_orders"]
        assert receiver.snapshot() == []  # the fix job's own delivery step never ran

        request = tick(instance, db_url)
        assert request.skip_message is None and len(request.run_requests) == 1
        delivered = run_delivery_job(instance, db_url, publisher)
        again = run_delivery_job(instance, db_url, publisher)  # a manual launch on top: harmless
        received = receiver.accepted_per_key()

    assert delivered.success and again.success
    assert received == {row.idempotency_key: 1 for row in waiting}
    assert outbox_states(shop.engine) == {tb.DELIVERED: 2}
    assert tick(instance, db_url).skip_message == "no OrderCompleted event is due in the outbox"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("job_name", [jobs.JOB_NAME, delivery_jobs.DELIVERY_JOB_NAME])
def test_the_delivery_schedule_skips_while_a_delivering_run_is_in_flight(
    shop, db_url, instance, job_name
):
    seed_events(shop, 1)
    run = run_with_status(instance, dg.DagsterRunStatus.QUEUED)
    if job_name != jobs.JOB_NAME:
        instance.delete_run(run.run_id)
        run = dg.DagsterRun(job_name=job_name, run_id="d" * 36, status=dg.DagsterRunStatus.STARTED)
        instance.add_run(run)

    assert tick(instance, db_url).skip_message.startswith(f"run {run.run_id} of {job_name} is ")


def test_the_delivery_schedule_says_in_one_line_when_the_outbox_cannot_be_read(tmp_path, instance):
    # A fresh database: our tables were never migrated.
    result = tick(instance, f"sqlite:///{tmp_path / 'empty.db'}")
    assert result.run_requests == []
    assert result.skip_message.startswith("outbox not read: ")
    assert "\n" not in result.skip_message


def test_the_delivery_job_and_schedule_are_registered_and_share_the_fix_jobs_pool():
    job = defs.resolve_job_def(delivery_jobs.DELIVERY_JOB_NAME)
    schedule = defs.resolve_schedule_def("deliver_order_completed_events_every_minute")
    assert schedule.job_name == delivery_jobs.DELIVERY_JOB_NAME
    assert schedule.cron_schedule == "* * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert [node.name for node in job.nodes] == ["order_completed_events"]
    assert job.nodes[0].definition.pool == "regularization"
