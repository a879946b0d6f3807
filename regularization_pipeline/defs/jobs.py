"""The job, the schedule that runs it every five minutes, and the sensor that runs it on an orphan alert;
the delivery job and its schedule (``defs/delivery_jobs.py``) and the checks job
(``defs/check_jobs.py``) are beside it."""

import os

import dagster as dg

from regularization_pipeline.defs import assets, checks
from regularization_pipeline.defs.config import (
    CONCURRENCY_TAG,
    DEFAULT_MAX_RUNTIME_SECONDS,
    HARD_MAX_RUNTIME_SECONDS,
    JOB_NAME,
)
from regularization_pipeline.defs.shops import (
    PARTITION_TAG,
    SHOP_PARTITIONS,
    SHOPS,
    partitioned_config,
    shop_tags,
)

# The schedule's cron, read when the code location loads (a test fires it every minute).
SCHEDULE_CRON_ENV = "REGULARIZATION_SCHEDULE_CRON"
DEFAULT_SCHEDULE_CRON = "*/5 * * * *"
# Run monitoring fails a run that has not finished after this long, freeing the slot; the
# run's own soft limit (max_runtime_seconds, 240 s) ends a slow run well before it.
MAX_RUNTIME_SECONDS = HARD_MAX_RUNTIME_SECONDS

# Dagster's IN_PROGRESS_RUN_STATUSES leave out QUEUED and NOT_STARTED, which
# would let the schedule queue a second run behind a stuck one.
IN_FLIGHT_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]

regularize_completed_orders = dg.define_asset_job(
    name=JOB_NAME,
    selection=dg.AssetSelection.assets(
        assets.app_orders,
        assets.regularized_orders,
        assets.order_completed_events,
        assets.regularization_audit,
    ),
    description="Find orders left pending after a lost payment webhook, verify and complete them, deliver their "
    "OrderCompleted events and record the audit trail; the checks on app_orders run last, on the "
    "state the run left. Never runs twice at once. Takes new orders for max_runtime_seconds "
    f"({DEFAULT_MAX_RUNTIME_SECONDS:g} s by default); run monitoring fails a run still going "
    f"after {MAX_RUNTIME_SECONDS} s (the dagster/max_runtime tag).",
    executor_def=dg.in_process_executor,
    partitions_def=SHOP_PARTITIONS,
    config=partitioned_config("regularized_orders"),
    tags={
        **({CONCURRENCY_TAG: JOB_NAME} if SHOP_PARTITIONS is None else {}),
        "dagster/max_runtime": str(MAX_RUNTIME_SECONDS),
    },
)


def in_flight_run(
    instance: dg.DagsterInstance, job_name: str = JOB_NAME, shop: str | None = None
) -> dg.RunRecord | None:
    """A run of the job (``job_name``) that is queued or in progress, if any (of ``shop``)."""
    tags = {PARTITION_TAG: shop} if shop is not None else None
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT_STATUSES, tags=tags), limit=1
    )
    return records[0] if records else None


def skip_while_in_flight(
    instance: dg.DagsterInstance, job_name: str, why: str = ""
) -> dg.SkipReason | None:
    """The skip every schedule gives while a run of ``job_name`` is queued or in progress."""
    running = in_flight_run(instance, job_name)
    if running is None:
        return None
    run = running.dagster_run
    return dg.SkipReason(
        f"run {run.run_id} of {job_name} is {run.status.value}{why}: skipping this tick"
    )


def shops_in_flight(
    instance: dg.DagsterInstance, job_names: tuple[str, ...] = (JOB_NAME,)
) -> dict[str, str]:
    """Shop -> the id of its run of one of ``job_names`` queued or in progress: one query each."""
    busy: dict[str, str] = {}
    for job_name in job_names:
        records = instance.get_run_records(
            filters=dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT_STATUSES)
        )
        for record in records:
            shop = record.dagster_run.tags.get(PARTITION_TAG)
            if shop is not None:
                busy.setdefault(shop, record.dagster_run.run_id)
    return busy


def shop_run_requests(
    context: dg.ScheduleEvaluationContext,
    shops,
    job_names: tuple[str, ...] = (JOB_NAME,),
    wanted=lambda name: True,
) -> list | dg.SkipReason:
    """One run request per scheduled shop without a run of ``job_names`` in flight (and
    ``wanted``); a run key per shop and tick, so a tick evaluated twice never launches a shop
    twice."""
    busy = shops_in_flight(context.instance, job_names)
    tick = context.scheduled_execution_time
    stamp = tick.strftime("%Y%m%dT%H%M%SZ") if tick else "manual"
    requests, skipped = [], []
    for name, shop in shops.items():
        if not shop.scheduled:
            continue
        if name in busy:
            skipped.append(f"{name} (run {busy[name]} in flight)")
            continue
        if not wanted(name):
            continue
        requests.append(
            dg.RunRequest(run_key=f"{name}:{stamp}", partition_key=name, tags=shop_tags(name))
        )
    if skipped:
        context.log.info(f"skipping shops this tick: {', '.join(skipped)}")
    if not requests:
        return dg.SkipReason(f"no shop to run this tick: {', '.join(skipped) or 'none scheduled'}")
    return requests


@dg.schedule(
    name="regularize_completed_orders_every_5_minutes",
    job=regularize_completed_orders,
    cron_schedule=os.environ.get(SCHEDULE_CRON_ENV) or DEFAULT_SCHEDULE_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Runs regularize_completed_orders every five minutes (REGULARIZATION_SCHEDULE_CRON), "
    "and skips the tick while a run of the job is still queued or in progress; with a shops file, "
    "one run per shop, skipping only the shops with a run in flight.",
)
def regularize_completed_orders_every_5_minutes(context: dg.ScheduleEvaluationContext):
    """A run request (one per shop with a shops file), or a skip naming the run still in flight."""
    if SHOPS is not None:
        return shop_run_requests(context, SHOPS)
    return skip_while_in_flight(context.instance, JOB_NAME) or dg.RunRequest()


# AssetCheckExecutionRecordStatus is not part of Dagster's public API; its value is stable.
CHECK_FAILED, CHECK_PLANNED = "FAILED", "PLANNED"
ORPHAN_CHECK_KEY = dg.AssetCheckKey(
    dg.AssetKey("app_orders"), checks.no_orphaned_pending_orders.check_key.name
)


@dg.sensor(
    name="regularize_on_orphan_alert",
    job=regularize_completed_orders,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches regularize_completed_orders when the check no_orphaned_pending_orders "
    "fails outside the job and the checks job (e.g. the check run on its own from the UI): "
    "once per failure.",
)
def regularize_on_orphan_alert(context: dg.SensorEvaluationContext):
    """A run request per new failure of the orphan check outside the job.

    A non-blocking failed check never fails its run, so run-failure sensors miss
    it. The cursor is the storage id of the last check evaluation settled: each
    failure launches one run, and its run key makes a repeated tick harmless.
    An evaluation still running keeps the cursor before it: Dagster records it
    as planned when its run starts and fills in the result under the same id.
    """
    last_seen = int(context.cursor) if context.cursor else 0
    history = context.instance.event_log_storage.get_asset_check_execution_history(
        ORPHAN_CHECK_KEY, limit=50
    )
    new = [record for record in history if record.id > last_seen]
    if not new:
        return dg.SkipReason("no new evaluation of no_orphaned_pending_orders")
    running = [record.id for record in new if _still_running(context.instance, record)]
    context.update_cursor(str(min(running) - 1 if running else max(record.id for record in new)))
    failures = [
        record
        for record in new
        if record.status.value == CHECK_FAILED
        and not _is_run_of_job(context.instance, record.run_id)
    ]
    if not failures:
        return dg.SkipReason("no new failure of no_orphaned_pending_orders outside the job")
    # The latest failure of each shop (one shop without a shops file): one run each.
    latest: dict[str | None, object] = {}
    for record in sorted(failures, key=lambda record: record.id):
        latest[_shop_of_check_run(context.instance, record.run_id)] = record
    return [
        dg.RunRequest(
            run_key=f"orphan-alert-{record.id}",
            partition_key=shop,
            tags={
                "regularization/trigger": "no_orphaned_pending_orders",
                "regularization/check_run_id": record.run_id,
                **(shop_tags(shop) if shop else {}),
            },
        )
        for shop, record in latest.items()
        if SHOPS is None or shop in SHOPS
    ]


def _shop_of_check_run(instance: dg.DagsterInstance, run_id: str) -> str | None:
    if SHOPS is None:
        return None
    run = instance.get_run_by_id(run_id) if run_id else None
    return run.tags.get(PARTITION_TAG) if run is not None else None


def _still_running(instance: dg.DagsterInstance, record) -> bool:
    """A planned evaluation whose run has not finished (a finished run left it planned for good)."""
    if record.status.value != CHECK_PLANNED:
        return False
    run = instance.get_run_by_id(record.run_id) if record.run_id else None
    return run is not None and not run.is_finished


# Runs of the checks job (defs/check_jobs.py) carry it: their failures are the routine
# re-evaluation every two minutes, not a human asking; the schedule launches the job.
CHECKS_KIND_TAG = ("regularization/kind", "checks")


def _is_run_of_job(instance: dg.DagsterInstance, run_id: str) -> bool:
    run = instance.get_run_by_id(run_id)
    if run is None:
        return False
    key, value = CHECKS_KIND_TAG
    return run.job_name == JOB_NAME or run.tags.get(key) == value
