"""Delivery on its own: a job that only delivers the outbox, its schedule, and nothing else.

The job `regularize_completed_orders` still delivers what it has just written, but its
delivery step runs only after the fix step succeeded: a fix step that keeps failing (a
provider token refused, a busy lock, a misconfiguration) would otherwise stop every pending
event and retry, including those of earlier runs and operator actions. This job delivers
whatever is due, whoever wrote it. Its asset is in the same pool as the fix job's
(`regularization`), so a launch waits in the queue behind a run of the fix job; and where two
dispatchers do meet (a CLI `deliver` beside a run), the outbox leases keep each event to one
delivery attempt at a time.
"""

import os

import dagster as dg
import sqlalchemy as sa

from regularization_pipeline.core.delivery.outbox import count_due
from regularization_pipeline.core.errors import RegularizationError, describe_error
from regularization_pipeline.defs import assets
from regularization_pipeline.defs.jobs import (
    JOB_NAME,
    MAX_RUNTIME_SECONDS,
    shop_run_requests,
    skip_while_in_flight,
)
from regularization_pipeline.defs.resources import AppDatabaseResource
from regularization_pipeline.defs.shops import SHOP_PARTITIONS, SHOPS

DELIVERY_JOB_NAME = "deliver_order_completed_events"
DELIVERY_CRON_ENV = "REGULARIZATION_DELIVERY_CRON"
DEFAULT_DELIVERY_CRON = "* * * * *"

deliver_order_completed_events = dg.define_asset_job(
    name=DELIVERY_JOB_NAME,
    selection=dg.AssetSelection.assets(assets.order_completed_events),
    description="Deliver every OrderCompleted event due in the outbox (new ones, retries, redelivered "
    "ones), whatever wrote them and whether or not the last regularization succeeded. Same "
    "pool as the regularization job: it waits in the queue while one runs.",
    executor_def=dg.in_process_executor,
    partitions_def=SHOP_PARTITIONS,
    tags={"dagster/max_runtime": str(MAX_RUNTIME_SECONDS)},
)


@dg.schedule(
    name="deliver_order_completed_events_every_minute",
    job=deliver_order_completed_events,
    cron_schedule=os.environ.get(DELIVERY_CRON_ENV) or DEFAULT_DELIVERY_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=f"Runs {DELIVERY_JOB_NAME} every minute ({DELIVERY_CRON_ENV}) when an event is due "
    f"in the outbox; skips the tick while a run of it or of {JOB_NAME} (which delivers too) is "
    "queued or in progress, and when nothing is due, so idle minutes leave no run behind.",
)
def deliver_order_completed_events_every_minute(
    context: dg.ScheduleEvaluationContext, app_db: AppDatabaseResource
):
    """A run request when the outbox has a due event and no delivery is under way (per shop
    with a shops file: a shop whose outbox cannot be read is skipped, the others go on)."""
    if SHOPS is not None:
        return shop_run_requests(
            context,
            SHOPS,
            (DELIVERY_JOB_NAME, JOB_NAME),
            wanted=lambda name: _has_due_events(context, app_db, name),
        )
    for job_name in (DELIVERY_JOB_NAME, JOB_NAME):
        skip = skip_while_in_flight(context.instance, job_name, ": it delivers")
        if skip is not None:
            return skip
    try:
        due = count_due(app_db.get_engine(), app_db.owned_tables())
    except (RegularizationError, sa.exc.SQLAlchemyError) as exc:
        # The database not configured, unreachable or not migrated: one line, the next tick retries.
        return dg.SkipReason(f"outbox not read: {describe_error(exc)}")
    if not due:
        return dg.SkipReason("no OrderCompleted event is due in the outbox")
    return dg.RunRequest(tags={"regularization/trigger": f"{due} event(s) due"})


def _has_due_events(
    context: dg.ScheduleEvaluationContext, app_db: AppDatabaseResource, shop: str
) -> bool:
    """Whether the shop's outbox has a due event; one engine per shop, closed at once."""
    app_db.for_shop(shop)
    try:
        return bool(count_due(app_db.get_engine(), app_db.owned_tables()))
    except (RegularizationError, sa.exc.SQLAlchemyError) as exc:
        context.log.warning(f"shop {shop}: outbox not read: {describe_error(exc)}")
        return False
    finally:
        app_db.teardown_after_execution(None)
