"""The schedule never queues a second run, and the orphan-alert sensor launches exactly one run per failure."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest
from dagster._core.remote_origin import (
    RegisteredCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.test_utils import (
    create_run_for_test,  # Dagster's own helper to put a run in a given state
)

from regularization_pipeline.core.detection import orphans as detection
from regularization_pipeline.definitions import defs
from regularization_pipeline.defs.config import RegularizeConfig
from regularization_pipeline.defs.jobs import (
    CONCURRENCY_TAG,
    IN_FLIGHT_STATUSES,
    JOB_NAME,
    regularize_completed_orders,
    regularize_completed_orders_every_5_minutes,
    regularize_on_orphan_alert,
)
from tests.support.dagster import ALL_ASSETS, ALL_CHECKS, resources

TICK = dt.datetime(2030, 1, 1, 12, 5, tzinfo=dt.UTC)


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def evaluate_schedule(instance):
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=TICK)
    return regularize_completed_orders_every_5_minutes.evaluate_tick(context)


def test_schedule_is_every_five_minutes_in_utc_and_on_by_default():
    schedule = defs.resolve_schedule_def("regularize_completed_orders_every_5_minutes")
    assert schedule.cron_schedule == "*/5 * * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == JOB_NAME


def test_schedule_requests_a_run_when_none_is_in_flight(instance):
    create_run_for_test(instance, job_name=JOB_NAME, status=dg.DagsterRunStatus.SUCCESS)
    create_run_for_test(instance, job_name=JOB_NAME, status=dg.DagsterRunStatus.FAILURE)
    create_run_for_test(instance, job_name="some_other_job", status=dg.DagsterRunStatus.STARTED)

    result = evaluate_schedule(instance)

    assert result.skip_message is None
    assert len(result.run_requests) == 1


def run_with_status(instance, status):
    # Dagster only queues a run that knows which code location to launch it from.
    origin = RemoteJobOrigin(
        RemoteRepositoryOrigin(
            RegisteredCodeLocationOrigin("regularization_pipeline"), "__repository__"
        ),
        JOB_NAME,
    )
    run = create_run_for_test(instance, job_name=JOB_NAME, status=status, remote_job_origin=origin)
    assert instance.get_run_by_id(run.run_id).status == status
    return run


@pytest.mark.parametrize("status", IN_FLIGHT_STATUSES, ids=lambda s: s.value)
def test_schedule_skips_while_a_run_is_queued_or_in_progress(instance, status):
    run = run_with_status(instance, status)

    result = evaluate_schedule(instance)

    assert not result.run_requests
    assert (
        result.skip_message
        == f"run {run.run_id} of {JOB_NAME} is {status.value}: skipping this tick"
    )


def test_in_flight_statuses_include_the_ones_dagster_leaves_out():
    assert {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED} <= set(IN_FLIGHT_STATUSES)


def test_job_runs_carry_the_concurrency_tag_and_a_max_runtime():
    job = defs.resolve_job_def(JOB_NAME)
    assert job.tags[CONCURRENCY_TAG] == JOB_NAME
    assert int(job.tags["dagster/max_runtime"]) > 0


def test_the_two_run_time_limits_are_one_story_in_the_launchpad_field():
    hard = int(defs.resolve_job_def(JOB_NAME).tags["dagster/max_runtime"])
    field = RegularizeConfig.model_fields["max_runtime_seconds"]
    assert field.default < hard
    assert f"{field.default:g} s" in field.description
    assert f"dagster/max_runtime tag ({hard} s) is the hard limit" in field.description


def test_every_job_schedule_and_sensor_has_a_description_for_the_ui():
    repo = defs.get_repository_def()
    described = [*repo.get_all_jobs(), *repo.schedule_defs, *repo.sensor_defs]
    assert {regularize_completed_orders_every_5_minutes.name, regularize_on_orphan_alert.name} <= {
        d.name for d in described
    }
    # __ASSET_JOB is Dagster's own hidden job, never shown in the UI.
    missing = [
        d.name for d in described if not (d.description or "").strip() and d.name != "__ASSET_JOB"
    ]
    assert missing == []


# --- the sensor --------------------------------------------------------------------


def run_checks_on_their_own(db_url, instance):
    """What an operator does with "Execute checks" in the UI: a run of the checks alone."""
    return dg.materialize(
        [*ALL_ASSETS, *ALL_CHECKS],
        instance=instance,
        resources=resources(db_url),
        selection=dg.AssetSelection.checks_for_assets("app_orders"),
    )


def tick(instance, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    return regularize_on_orphan_alert.evaluate_tick(context)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_failing_orphan_check_outside_the_job_launches_one_run(shop, instance):
    db_url = shop.engine.url.render_as_string(hide_password=False)
    shop.orphans(2)
    check_run = run_checks_on_their_own(db_url, instance)

    first = tick(instance)

    assert len(first.run_requests) == 1
    request = first.run_requests[0]
    assert request.run_key.startswith("orphan-alert-")
    assert request.tags["regularization/check_run_id"] == check_run.run_id
    assert first.cursor

    second = tick(instance, cursor=first.cursor)
    assert not second.run_requests
    assert second.cursor == first.cursor


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_tick_during_the_check_run_does_not_lose_its_failure(shop, instance, monkeypatch):
    """A tick lands while the check's run is in progress (its evaluation only planned), then it fails."""
    db_url = shop.engine.url.render_as_string(hide_password=False)
    shop.orphans(2)
    during = []
    count_orphans = detection.orphan_stats

    def tick_then_count(*args, **kwargs):
        during.append(tick(instance))
        return count_orphans(*args, **kwargs)

    monkeypatch.setattr(detection, "orphan_stats", tick_then_count)
    check_run = run_checks_on_their_own(db_url, instance)

    (while_running,) = during
    assert not while_running.run_requests
    after = tick(instance, cursor=while_running.cursor)
    assert len(after.run_requests) == 1
    assert after.run_requests[0].tags["regularization/check_run_id"] == check_run.run_id
    assert not tick(instance, cursor=after.cursor).run_requests


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sensor_ignores_passing_checks_and_failures_inside_the_job(shop, instance, monkeypatch):
    db_url = shop.engine.url.render_as_string(hide_password=False)
    monkeypatch.setenv("REGULARIZATION_DATABASE_URL", db_url)
    run_checks_on_their_own(db_url, instance)  # nothing to find: passes
    passed = tick(instance)
    assert not passed.run_requests

    shop.orphans(1)
    # The job itself evaluates the check; a failure there is already being fixed by that run.
    job = dg.Definitions(
        assets=ALL_ASSETS,
        asset_checks=ALL_CHECKS,
        jobs=[regularize_completed_orders],
        resources=resources(db_url),
    ).resolve_job_def(JOB_NAME)
    job.execute_in_process(
        instance=instance, run_config={"ops": {"regularized_orders": {"config": {"sleep": 0}}}}
    )

    inside = tick(instance, cursor=passed.cursor)
    assert not inside.run_requests
    assert int(inside.cursor) > int(passed.cursor)


def test_a_runless_failure_report_launches_a_run(instance):
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey("app_orders"),
            check_name="no_orphaned_pending_orders",
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
        )
    )
    assert len(tick(instance).run_requests) == 1
