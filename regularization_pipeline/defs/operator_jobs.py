"""Operator jobs, launched by hand from the Launchpad: the CLI's operator tools with the same checks.

Each is a single op calling ``core.operator_tools`` or ``core.retention``. Bad
input (an unknown order, an order that is not an orphan, a malformed time)
fails the run at once with a message naming it, without retries, and changes
nothing. Outcomes are logged with ids and counts only.
"""

import dagster as dg
from pydantic import Field

from regularization_pipeline.core.delivery.publishers import delivery_line
from regularization_pipeline.core.detection.shop_rules import require_sound_shop
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.operations import operator_tools, retention
from regularization_pipeline.core.operations.doctor import diagnose
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.binding import AppSchema
from regularization_pipeline.core.shop.migrations import require_migrated
from regularization_pipeline.defs.assets import deliver_due, permanent_errors_fail_without_retry
from regularization_pipeline.defs.resources import (
    AppDatabaseResource,
    EventPublisherResource,
    PaymentGatewayResource,
)

OPERATOR_TAGS = {"regularization/kind": "operator"}


def checked_schema(app_db: AppDatabaseResource) -> AppSchema:
    """The bound mapping, our tables migrated, and the shop's rows checked as a run checks them."""
    schema, engine = app_db.bind(), app_db.get_engine()
    require_migrated(engine, schema.mapping.table_prefix)
    require_sound_shop(engine, schema)
    return schema


class OneOrderConfig(dg.Config):
    """Which order, and how it is decided."""

    order_id: str = Field(description="The order's id in the application.")
    min_age_minutes: float = Field(
        default=10.0, description="Grace period left to the webhook. Must be >= 0."
    )
    dry_run: bool = Field(
        default=False, description="Decide and audit as 'dry-run', change nothing."
    )


@dg.op(tags=OPERATOR_TAGS)
def regularize_named_order(
    context: dg.OpExecutionContext,
    config: OneOrderConfig,
    app_db: AppDatabaseResource,
    payment_gateway: PaymentGatewayResource,
) -> None:
    """Regularize one orphaned order now: lock, re-verify, flip, one outbox row and one audit row.

    Refuses an unknown order or one that is not an orphan, changing nothing.
    """
    with permanent_errors_fail_without_retry():
        options = RunOptions.parse(min_age_minutes=config.min_age_minutes, dry_run=config.dry_run)
        schema = checked_schema(app_db)
        verifier = payment_gateway.verifier()
        try:
            outcome = operator_tools.regularize_order(
                Regularizer(app_db.get_engine(), schema, verifier=verifier),
                config.order_id,
                options,
                f"operator-{context.run_id}",
            )
        finally:
            if verifier is not None:
                verifier.close()
    context.log.info(f"order {outcome.order_id}: {outcome.action}")
    if outcome.action not in ("regularized", "dry-run"):
        raise dg.Failure(
            description=f"order {outcome.order_id}: {outcome.action}", allow_retries=False
        )


@dg.job(tags=OPERATOR_TAGS)
def regularize_one_order():
    """Regularize one orphaned order by id, with every guarantee of a scheduled run."""
    regularize_named_order()


class OrderIdConfig(dg.Config):
    order_id: str = Field(description="The quarantined order's id in the application.")


@dg.op(tags=OPERATOR_TAGS)
def release_order(
    context: dg.OpExecutionContext, config: OrderIdConfig, app_db: AppDatabaseResource
) -> None:
    """Lift an order's quarantine and reset its failure count; the next run retries it."""
    with permanent_errors_fail_without_retry():
        schema = checked_schema(app_db)
        with app_db.get_engine().connect() as conn:
            order_id = operator_tools.existing_order_id(conn, schema, config.order_id)
        Regularizer(app_db.get_engine(), schema).release(
            order_id, run_id=f"operator-{context.run_id}"
        )
    context.log.info(f"order {order_id}: released from quarantine")


@dg.job(tags=OPERATOR_TAGS)
def release_quarantined_order():
    """Release one quarantined order so the next run of the regularization retries it."""
    release_order()


class RedeliverConfig(dg.Config):
    event_ids: list[str] = Field(
        default=[], description="Dead events to redeliver (every one must be dead)."
    )
    all_dead: bool = Field(
        default=False, description="Every dead event instead (narrowed by since/until)."
    )
    since: str | None = Field(
        default=None,
        description="With all_dead: events created at or after this UTC time (ISO 8601).",
    )
    until: str | None = Field(
        default=None,
        description="With all_dead: events created at or before this UTC time (ISO 8601).",
    )


def _time(name: str, text: str | None):
    if text is None:
        return None
    try:
        return operator_tools.parse_utc_time(text)
    except ValueError:
        raise ConfigurationError(f"{name}: {text!r} is not an ISO 8601 time") from None


@dg.op(tags=OPERATOR_TAGS)
def redeliver_events(
    context: dg.OpExecutionContext,
    config: RedeliverConfig,
    app_db: AppDatabaseResource,
    event_publisher: EventPublisherResource,
) -> None:
    """Put dead-lettered OrderCompleted events back in the queue, then deliver the outbox at once."""
    with permanent_errors_fail_without_retry():
        engine = app_db.get_engine()
        checked_schema(app_db)
        event_publisher.settings()  # a bad publisher setting refuses before anything changes
        count = operator_tools.redeliver_dead_events(
            engine,
            app_db.owned_tables(),
            event_ids=config.event_ids,
            all_dead=config.all_dead,
            since=_time("since", config.since),
            until=_time("until", config.until),
        )
    context.log.info(f"{count} dead event(s) back in the queue")
    if not count:
        return
    with permanent_errors_fail_without_retry():
        summary, destination = deliver_due(
            engine, app_db.owned_tables(), event_publisher, owner=f"operator-{context.run_id}"
        )
    context.log.info(delivery_line(destination, summary.delivered, summary.retried, summary.dead))


@dg.job(tags=OPERATOR_TAGS)
def redeliver_dead_events():
    """Redeliver dead-lettered OrderCompleted events (by id, or all of them), at once."""
    redeliver_events()


class PruneConfig(dg.Config):
    older_than_days: float = Field(
        default=retention.DEFAULT_RETENTION_DAYS,
        description="Retention period in days. Must be >= 1.",
    )
    dry_run: bool = Field(default=False, description="Count what would be pruned, delete nothing.")


@dg.op(tags=OPERATOR_TAGS)
def prune_old_history(
    context: dg.OpExecutionContext, config: PruneConfig, app_db: AppDatabaseResource
) -> None:
    """Delete audit rows and delivered or dead outbox events older than the retention; never pending events."""
    with permanent_errors_fail_without_retry():
        engine = app_db.get_engine()
        checked_schema(app_db)
        summary = retention.prune_history(
            engine, app_db.owned_tables(), config.older_than_days, dry_run=config.dry_run
        )
    verb = "would prune" if summary.dry_run else "pruned"
    context.log.info(f"{verb} before {summary.cutoff.isoformat()}: {summary.as_metrics()}")


@dg.job(tags=OPERATOR_TAGS)
def prune_history():
    """Prune this project's history past the retention period (audit trail, settled outbox events)."""
    prune_old_history()


@dg.op(tags=OPERATOR_TAGS)
def diagnose_shop(context: dg.OpExecutionContext, app_db: AppDatabaseResource) -> None:
    """Check the mapping against the shop, read-only: statuses and how each is classified, dangerous
    combinations, recommended indexes, server, time zone, and what a run would do now.

    Fails with the verdict when the mapping would act wrongly.
    """
    with permanent_errors_fail_without_retry():
        schema = app_db.bind()
        with app_db.get_engine().connect() as conn:
            report = diagnose(conn, schema)
        context.log.info("\n".join(report.lines()))
        context.add_output_metadata({"warnings": len(report.warnings), "verdict": report.verdict})
        if report.acts_wrongly:
            raise ConfigurationError(report.verdict)


@dg.job(tags=OPERATOR_TAGS)
def doctor():
    """Before switching the schedule on: what the mapping makes of this shop (the CLI's `doctor`)."""
    diagnose_shop()


OPERATOR_JOBS = [
    regularize_one_order,
    release_quarantined_order,
    redeliver_dead_events,
    prune_history,
    doctor,
]
