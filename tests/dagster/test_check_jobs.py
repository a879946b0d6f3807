"""The checks on their own: the checks job reads the shop afresh at each run, its schedule and the
after-run sensor keep it from going stale, and its routine failures never launch the fix job."""

from __future__ import annotations

import datetime as dt
import time

import dagster as dg
import pytest

from regularization_pipeline.definitions import defs
from regularization_pipeline.defs import check_jobs, jobs, operator_jobs
from tests.dagster.test_automation import tick as orphan_alert_tick
from tests.support.dagster import ALL_ASSETS, ALL_CHECKS, resources

TICK = dt.datetime(2030, 1, 1, 12, 2, tzinfo=dt.UTC)


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def run_checks_job(db_url: str, instance) -> dict[str, dg.AssetCheckEvaluation]:
    job = dg.Definitions(
        assets=ALL_ASSETS,
        asset_checks=ALL_CHECKS,
        jobs=[check_jobs.check_app_orders],
        resources=resources(db_url),
    ).resolve_job_def(check_jobs.CHECKS_JOB_NAME)
    result = job.execute_in_process(instance=instance)
    assert result.success
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_after_the_shop_changes_the_next_checks_run_reports_the_right_count(shop, db_url, instance):
    first_orphans = shop.orphans(3)
    before = time.time()
    first = run_checks_job(db_url, instance)
    assert first["no_orphaned_pending_orders"].metadata["orphaned_orders"].value == 3
    read_at = first["no_orphaned_pending_orders"].metadata["shop_read_at"].value
    assert before - 1 <= read_at <= time.time() + 1
    assert "shop_read_at" in first["transactions_consistent"].metadata

    # The shop moves on between runs: two payments are lost, a late webhook completes one order.
    shop.orphans(2)
    with shop.engine.begin() as conn:
        orders = shop.tables.orders
        conn.execute(
            orders.update().where(orders.c.id == first_orphans[0]).values(status="completed")
        )
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=TICK) as context:
        request = check_jobs.check_app_orders_every_2_minutes.evaluate_tick(context)
    assert len(request.run_requests) == 1

    second = run_checks_job(db_url, instance)
    assert second["no_orphaned_pending_orders"].metadata["orphaned_orders"].value == 4
    assert second["no_orphaned_pending_orders"].metadata["shop_read_at"].value > read_at


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_routine_checks_failures_do_not_launch_the_fix_job(shop, db_url, instance):
    shop.orphans(2)
    run_checks_job(db_url, instance)  # fails the orphan check (WARN): the schedule fixes them
    assert not orphan_alert_tick(instance).run_requests


def _after(instance, job_name: str):
    run = instance.add_run(
        dg.DagsterRun(job_name=job_name, run_id=f"{job_name[:8]:0<8}-0000-0000-0000-000000000000")
    )
    event = dg.DagsterEvent(dg.DagsterEventType.RUN_SUCCESS.value, job_name=job_name)
    with dg.build_run_status_sensor_context(
        sensor_name=check_jobs.check_app_orders_after_each_run.name,
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=event,
    ) as context:
        return check_jobs.check_app_orders_after_each_run(context)


@pytest.mark.parametrize(
    "job_name",
    [operator_jobs.regularize_one_order.name, "__ASSET_JOB", "deliver_order_completed_events"],
)
def test_every_other_successful_run_is_followed_by_a_checks_run(instance, job_name):
    request = _after(instance, job_name)
    assert isinstance(request, dg.RunRequest), request
    assert request.run_key.startswith("after-")


@pytest.mark.parametrize("job_name", [jobs.JOB_NAME, check_jobs.CHECKS_JOB_NAME])
def test_no_checks_run_after_the_fix_job_or_the_checks_job(instance, job_name):
    assert isinstance(_after(instance, job_name), dg.SkipReason)


def test_the_checks_job_schedule_and_sensor_are_registered():
    job = defs.resolve_job_def(check_jobs.CHECKS_JOB_NAME)
    schedule = defs.resolve_schedule_def("check_app_orders_every_2_minutes")
    assert schedule.cron_schedule == "*/2 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    # The observation of app_orders with its checks: it gives the job the shops' partitions.
    assert sorted(n.name for n in job.nodes) == [
        "app_orders_no_orphaned_pending_orders",
        "app_orders_transactions_consistent",
        "observe_app_orders",
    ]
    sensor = defs.resolve_sensor_def("check_app_orders_after_each_run")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
