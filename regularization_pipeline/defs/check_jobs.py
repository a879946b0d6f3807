"""The checks on their own: a job that only evaluates the checks on ``app_orders``, a schedule that
runs it every two minutes, and a sensor that runs it after every other run that succeeded.

Inside `regularize_completed_orders` the checks run last; but a fix step that fails skips
them, a Materialize of one asset or an operator job does not run them, and the shop changes
between runs (webhooks arrive, orders are placed, `make demo-reset`): the UI then showed a
result minutes or runs old. Checks read and never write, so this job takes no pool and no
lock. A schedule, not declarative automation: it is one switch in Automation, with the same
skip rule as the other schedules, and it needs neither the automation sensor nor a
materialization to react to (``app_orders`` is observed, never materialized).
"""

import os

import dagster as dg

from regularization_pipeline.defs import checks
from regularization_pipeline.defs.jobs import CHECKS_KIND_TAG, JOB_NAME, skip_while_in_flight
from regularization_pipeline.defs.shops import SHOPS

CHECKS_JOB_NAME = "check_app_orders"
CHECKS_CRON_ENV = "REGULARIZATION_CHECKS_CRON"
DEFAULT_CHECKS_CRON = "*/2 * * * *"

check_app_orders = dg.define_asset_job(
    name=CHECKS_JOB_NAME,
    selection=dg.AssetSelection.checks(
        checks.no_orphaned_pending_orders, checks.transactions_consistent
    ),
    description="Evaluate the checks on app_orders now (orphans waiting, inconsistent payments), "
    "read-only: what the UI shows is at most a few minutes old, whatever ran or failed.",
    executor_def=dg.in_process_executor,
    tags=dict([CHECKS_KIND_TAG]),
)


@dg.schedule(
    name="check_app_orders_every_2_minutes",
    job=check_app_orders,
    cron_schedule=os.environ.get(CHECKS_CRON_ENV) or DEFAULT_CHECKS_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=f"Runs {CHECKS_JOB_NAME} every two minutes ({CHECKS_CRON_ENV}) so the checks on "
    "app_orders are never more than a few minutes stale; skips the tick while a run of it is "
    "still queued or in progress.",
)
def check_app_orders_every_2_minutes(context: dg.ScheduleEvaluationContext):
    """A run request (one per shop with a shops file), or a skip naming the run in flight."""
    if SHOPS is not None:
        return dg.SkipReason(MANY_SHOPS)
    return skip_while_in_flight(context.instance, CHECKS_JOB_NAME) or dg.RunRequest()


# Dagster 1.13 gives a job that selects checks only no partitions (it infers them from the
# selected assets), so it cannot run one shop's partitioned checks: with a shops file the checks
# run last in each shop's regularize_completed_orders run instead (every five minutes).
MANY_SHOPS = (
    f"with a shops file the checks run in each shop's {JOB_NAME} run: a checks-only job has no "
    "shop partitions"
)

# Its own checks run last already; the checks job itself would loop.
ALREADY_CHECKED = {JOB_NAME, CHECKS_JOB_NAME}


@dg.run_status_sensor(
    name="check_app_orders_after_each_run",
    run_status=dg.DagsterRunStatus.SUCCESS,
    request_job=check_app_orders,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=f"Runs {CHECKS_JOB_NAME} after every run that succeeded (a Materialize, an operator "
    f"job, a delivery), except {JOB_NAME}, whose checks run last in the run itself.",
)
def check_app_orders_after_each_run(context: dg.RunStatusSensorContext):
    """One checks run per successful run that may have changed what the checks count."""
    if context.dagster_run.job_name in ALREADY_CHECKED:
        return dg.SkipReason(f"{context.dagster_run.job_name} needs no checks run after it")
    if SHOPS is not None:
        return dg.SkipReason(MANY_SHOPS)
    return dg.RunRequest(
        run_key=f"after-{context.dagster_run.run_id}",
        tags={"regularization/after_run": context.dagster_run.run_id},
    )
