"""Every way of launching behaves the same: without a database configured the code location
loads, every sensor and schedule ticks without a traceback, and a launch fails in one line
naming the variable to set."""

from __future__ import annotations

import dagster as dg
import pytest

from regularization_pipeline.core.shop.engine import DATABASE_URL_ENV
from regularization_pipeline.definitions import defs
from regularization_pipeline.defs.resources import AlertResource, AppDatabaseResource

WHAT_TO_SET = f"{DATABASE_URL_ENV} is not set: give the application's SQLAlchemy database URL"


@pytest.fixture
def no_database(monkeypatch):
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    return {**defs.resources, "app_db": AppDatabaseResource.from_env(), "alerts": AlertResource()}


def test_without_a_database_every_sensor_and_schedule_ticks_without_a_traceback(no_database):
    with dg.instance_for_test() as instance:
        skips = {}
        for sensor in defs.sensors:
            if isinstance(sensor, dg.RunStatusSensorDefinition):
                continue  # reacts to runs only
            with dg.build_sensor_context(
                instance=instance, resources=no_database, definitions=defs
            ) as context:
                skips[sensor.name] = sensor.evaluate_tick(context).skip_message
        for schedule in defs.schedules:
            with dg.build_schedule_context(instance=instance, resources=no_database) as context:
                skips[schedule.name] = schedule.evaluate_tick(context).skip_message
    delivery = skips["deliver_order_completed_events_every_minute"]
    assert delivery.startswith("outbox not read: ConfigurationError: " + WHAT_TO_SET), delivery


def test_without_a_database_a_launch_fails_in_one_line_naming_the_variable(no_database):
    job = dg.Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, jobs=defs.jobs, resources=no_database
    ).resolve_job_def("regularize_completed_orders")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    description = failure.step_failure_data.user_failure_data.description
    assert description.startswith(WHAT_TO_SET) and "\n" not in description, description
