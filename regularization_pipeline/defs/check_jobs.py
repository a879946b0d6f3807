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
checks run on their own, one run per shop, like every other job. With many shops the schedule
asks a checks run only for the shops whose last fix run failed: the others were checked at
the end of that run, at most five minutes ago.
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
from regularization_pipeline.defs.shops import PARTITION_TAG, SHOPS, shop_name_of, shop_tags

FINISHED_STATUSES = [
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
]

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
    f"still queued or in progress. With a shops file, one run per shop whose last {JOB_NAME} "
    "run failed (the others were checked at the end of it).",
)
def check_app_orders_every_2_minutes(context: dg.ScheduleEvaluationContext):
    """A run request, or a skip naming the run in flight; with a shops file, one per shop whose
    last fix run did not succeed."""
    if SHOPS is None:
        return skip_while_in_flight(context.instance, CHECKS_JOB_NAME) or dg.RunRequest()
    unchecked = shops_left_unchecked(context.instance)
    requests = shop_run_requests(
        context, SHOPS, job_names=(CHECKS_JOB_NAME,), wanted=unchecked.__contains__
    )
    if isinstance(requests, dg.SkipReason) and not unchecked:
        return dg.SkipReason(f"every shop's checks ran in its last {JOB_NAME} run")
    return requests


def shops_left_unchecked(instance: dg.DagsterInstance) -> set[str]:
    """The shops whose last finished fix run did not succeed: its checks, which run last in it,
    were skipped. A shop whose fix run succeeded was checked then, at most five minutes ago, so
    with many shops the schedule launches no checks run for it (a run per shop every two
    minutes would cost fifty shops a run launch every few seconds)."""
    unchecked = set()
    for name in SHOPS or {}:
        records = instance.get_run_records(
            filters=dg.RunsFilter(
                job_name=JOB_NAME, statuses=FINISHED_STATUSES, tags={PARTITION_TAG: name}
            ),
            limit=1,
        )
        if records and records[0].dagster_run.status != dg.DagsterRunStatus.SUCCESS:
            unchecked.add(name)
    return unchecked


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
