"""The checks on their own: a job that observes ``app_orders`` and evaluates its checks, a schedule
that runs it every two minutes, and a sensor that runs it after every other run that succeeded.

Inside `regularize_completed_orders` the checks run last; but a fix step that fails skips
them, a Materialize of one asset or an operator job does not run them, and the shop changes
between runs (webhooks arrive, orders are placed, `make demo-reset`): the UI then showed a
result minutes or runs old. Checks read and never write, so this job takes no pool and no
lock. A schedule, not declarative automation: it is one switch in Automation, with the same
skip rule as the other schedules, and it needs neither the automation sensor nor a
materialization to react to (``app_orders`` is observed, never materialized).

The job selects the observation of ``app_orders`` with its checks: the orders-by-status counts
are refreshed with them, and with a shops file the job has the shops as partitions (Dagster
infers a job's partitions from its assets; a job of checks alone has none), so each shop's
checks run on their own, one run per shop, like every other job.
"""

import os

import dagster as dg

from regularization_pipeline.defs import assets, checks
from regularization_pipeline.defs.jobs import (
    CHECKS_KIND_TAG,
    JOB_NAME,
    shop_run_requests,
    skip_while_in_flight,
)
from regularization_pipeline.defs.shops import SHOPS, shop_name_of, shop_tags

CHECKS_JOB_NAME = "check_app_orders"
CHECKS_CRON_ENV = "REGULARIZATION_CHECKS_CRON"
DEFAULT_CHECKS_CRON = "*/2 * * * *"

check_app_orders = dg.define_asset_job(
    name=CHECKS_JOB_NAME,
    selection=dg.AssetSelection.assets(assets.app_orders)
    | dg.AssetSelection.checks(checks.no_orphaned_pending_orders, checks.transactions_consistent),
    description="Observe app_orders and evaluate its checks now (orphans waiting, inconsistent "
    "payments), read-only: what the UI shows is at most a few minutes old, whatever ran or failed.",
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
        return shop_run_requests(context, SHOPS, job_names=(CHECKS_JOB_NAME,))
    return skip_while_in_flight(context.instance, CHECKS_JOB_NAME) or dg.RunRequest()


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
    after = {"regularization/after_run": context.dagster_run.run_id}
    if SHOPS is None:
        return dg.RunRequest(run_key=f"after-{context.dagster_run.run_id}", tags=after)
    shop = shop_name_of(context.dagster_run)
    if shop not in SHOPS:
        return dg.SkipReason(f"run {context.dagster_run.run_id} names no shop of the shops file")
    return dg.RunRequest(
        run_key=f"after-{context.dagster_run.run_id}",
        partition_key=shop,
        tags={**shop_tags(shop), **after},
    )
