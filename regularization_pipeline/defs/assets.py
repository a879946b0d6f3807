"""Assets: the app's orders table (observed), the regularization, the events it fires, its audit.

Lineage: ``app_orders`` -> ``regularized_orders`` -> ``order_completed_events``
-> ``regularization_audit``. Each asset is a thin call into ``core`` whose
result becomes numeric metadata with stable keys, so the UI plots it over time.
"""

import statistics
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from regularization_pipeline.core import verdicts
from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.delivery.outbox import DispatchSummary
from regularization_pipeline.core.delivery.publishers import (
    close_publishers,
    delivery_line,
    describe_destination,
)
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.detection.held import held_in_window
from regularization_pipeline.core.errors import (
    DATABASE_ERRORS,
    BusyError,
    ConfigurationError,
    MigrationsMissingError,
    SchemaMismatchError,
    describe_error,
)
from regularization_pipeline.core.operations import reports
from regularization_pipeline.core.provider.answers import ProviderRejectedError
from regularization_pipeline.core.regularizer import (
    OrderOutcome,
    Regularizer,
    RunOptions,
    RunSummary,
)
from regularization_pipeline.core.shop.migrations import require_migrated
from regularization_pipeline.defs.config import CONCURRENCY_TAG, JOB_NAME, RegularizeConfig
from regularization_pipeline.defs.resources import (
    AppDatabaseResource,
    EventPublisherResource,
    PaymentGatewayResource,
)
from regularization_pipeline.defs.shops import SHOP_PARTITIONS

GROUP = "order_regularization"
OWNERS = ["team:payments"]
AUDIT_PREVIEW_ROWS = 50

# Transient database errors (a dropped connection, a lock timeout) are worth a
# retry; everything that cannot get better by waiting raises Failure(allow_retries=False).
TRANSIENT_DB_RETRY = dg.RetryPolicy(
    max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


@contextmanager
def permanent_errors_fail_without_retry() -> Iterator[None]:
    """Bad config, a wrong mapping, missing migrations, a provider refusing our token, or another
    run holding the shop's run lock ("busy: run R since T"): fail at once, having changed nothing.

    A database error that escapes the step fails it as describe_error says it (class, code,
    statement, our words), retried as before: Dagster keeps a failed step's message and its
    cause chain in the event log, and the server's own message can quote customer data."""
    try:
        yield
    except (
        BusyError,
        ConfigurationError,
        SchemaMismatchError,
        MigrationsMissingError,
        ProviderRejectedError,
    ) as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    except DATABASE_ERRORS as exc:
        raise dg.Failure(description=describe_error(exc)) from None


# Chosen on purpose (an observable source with its own key); its beta warning was the one
# line of the daemon's JSON log that was not JSON, printed by every process loading us.
warnings.filterwarnings(
    "ignore", message=".*multi_observable_source_asset.*", category=dg.BetaWarning
)


@dg.multi_observable_source_asset(
    specs=[
        dg.AssetSpec(
            "app_orders",
            description="The application's orders table, owned by the application: observed, never materialized "
            "here. Its observation records how many orders are in each status.",
            group_name=GROUP,
            owners=OWNERS,
            kinds={"sql", "table"},
        )
    ],
    name="observe_app_orders",
    partitions_def=SHOP_PARTITIONS,
)
def app_orders(
    context: dg.AssetExecutionContext, app_db: AppDatabaseResource
) -> Iterator[dg.ObserveResult]:
    """Row counts of the application's orders by status."""
    with permanent_errors_fail_without_retry():
        # The run's first step: out-of-range options (limit 0, sleep -1...) end the run
        # here, as its first and only error, before any check or order is touched.
        RegularizeConfig(**_regularize_config(context)).to_run_options()
    yield dg.ObserveResult(asset_key="app_orders", metadata=orders_by_status(app_db))


def orders_by_status(app_db: AppDatabaseResource) -> dict[str, int]:
    """``orders_total`` and ``orders_<status>``: the metadata of an observation of ``app_orders``."""
    with permanent_errors_fail_without_retry():
        schema = app_db.bind()
    return reports.orders_by_status(app_db.get_engine(), schema)


# Every order is logged while a run is this small (the default limit is 50); past it, one
# line per PROGRESS_EVERY_SECONDS: each line is a write to Dagster's event log, and on a
# large backlog a line per order cost more than the orders themselves.
PROGRESS_EVERY_ORDER_UP_TO = 100
PROGRESS_EVERY_SECONDS = 5.0


def _progress_logger(context: dg.AssetExecutionContext, clock=time.monotonic):
    last = [clock()]

    def log_progress(outcome: OrderOutcome, summary: RunSummary, limit: int) -> None:
        # Ids and actions only: reasons can quote amounts, and nothing personal belongs in run logs.
        now = clock()
        if summary.processed <= PROGRESS_EVERY_ORDER_UP_TO or summary.processed >= limit:
            context.log.info(
                f"{summary.processed}/{limit} {outcome.action} order {outcome.order_id}"
            )
        elif now - last[0] >= PROGRESS_EVERY_SECONDS:
            context.log.info(
                f"{summary.processed}/{limit} processed: {summary.regularized} regularized, "
                f"{summary.failed} failed, last order {outcome.order_id}"
            )
        else:
            return
        last[0] = now

    return log_progress


# One shop: the assets that change the shop's data share this pool; both dagster.yaml files limit
# every pool to one run at a time (granularity run), so a Materialize of either asset, which
# carries no run tag, waits in the queue behind a run of the job like any other launch.
# Many shops: no pool. A pool has one limit for all its runs, whatever their partition, so it
# would run one shop at a time; the per-shop limit is the `dagster/partition` tag limit of
# dagster.yaml (applyLimitPerUniqueValue), which every launch of a partition carries.
POOL = "regularization" if SHOP_PARTITIONS is None else None


def _take_the_concurrency_tag(context: dg.AssetExecutionContext) -> None:
    """A run launched without the job's tag takes it as the fix starts (one shop only).

    ``dagster asset materialize`` runs in its own process, past the queue, and a Materialize
    click carries no job tag: from here on the queue holds every other run of the job behind
    this one, as it does behind the job's own runs. Until here, the shop's run lock answers
    a second run ``busy``, changing nothing."""
    if SHOP_PARTITIONS is None and CONCURRENCY_TAG not in context.run.tags:
        context.instance.add_run_tags(context.run_id, {CONCURRENCY_TAG: JOB_NAME})


@dg.asset(
    deps=["app_orders"],
    group_name=GROUP,
    pool=POOL,
    owners=OWNERS,
    kinds={"python", "sql"},
    retry_policy=TRANSIENT_DB_RETRY,
    partitions_def=SHOP_PARTITIONS,
)
def regularized_orders(
    context: dg.AssetExecutionContext,
    config: RegularizeConfig,
    app_db: AppDatabaseResource,
    payment_gateway: PaymentGatewayResource,
    event_publisher: EventPublisherResource,
) -> dg.MaterializeResult:
    """Orders flipped from pending to completed because their payment completed but its webhook was lost.

    Each order is locked, re-verified and flipped in its own database transaction,
    together with its OrderCompleted outbox row and its audit row. Inconsistent
    orders (amount or currency mismatch, double charge, paid but cancelled) are
    reported, never fixed. Up to `limit` orders, `sleep` seconds apart.
    """
    _take_the_concurrency_tag(context)
    with permanent_errors_fail_without_retry():
        options = config.to_run_options()
        schema = app_db.bind()
        verifier = payment_gateway.verifier()
        # Laravel's database queue writes its job in the flip's own transaction.
        publishers = event_publisher.publishers_for_the_flip(app_db.get_engine())
        try:
            regularizer = Regularizer(
                app_db.get_engine(), schema, verifier=verifier, publishers=publishers
            )
            summary = regularizer.run(
                options, run_id=context.run_id, progress=_progress_logger(context)
            )
        finally:
            close_publishers(publishers)
            if verifier is not None:
                verifier.close()
    context.log.info(summary.headline())
    if summary.stopped_by_deadline:
        context.log.warning(
            f"stopped after {options.max_runtime_seconds} s; the rest waits for the next run"
        )
    if summary.stopped_by_provider:
        context.log.warning(
            "the payment provider is unavailable: stopped; the rest waits for the next run"
        )
    metadata: dict[str, object] = {
        # First in the UI: the figures that are not zero, in words; the numeric keys follow.
        "summary": dg.MetadataValue.text(summary.headline()),
        **summary.as_metrics(),
        "stopped_by_deadline": int(summary.stopped_by_deadline),
        "stopped_by_provider": int(summary.stopped_by_provider),
        "provider_requests": verifier.requests_sent if verifier else 0,
        "provider_rate_limited": verifier.rate_limited_responses if verifier else 0,
        "dry_run": int(options.dry_run),
    }
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    deps=[regularized_orders],
    group_name=GROUP,
    pool=POOL,
    owners=OWNERS,
    kinds={"python"},
    retry_policy=TRANSIENT_DB_RETRY,
    partitions_def=SHOP_PARTITIONS,
)
def order_completed_events(
    context: dg.AssetExecutionContext,
    app_db: AppDatabaseResource,
    event_publisher: EventPublisherResource,
) -> dg.MaterializeResult:
    """OrderCompleted events delivered from the outbox to every publisher, at least once.

    Every due event is delivered, including retries left by earlier runs; each
    carries the idempotency key `order-completed:<order id>`. Failures back off
    exponentially and end in the dead letter after the resource's max_attempts.
    With the `outbox` publisher (the default) nothing is sent: the events wait in
    the outbox table for the application (`delivered_to` says which).
    """
    with permanent_errors_fail_without_retry():
        engine, tables = app_db.get_engine(), app_db.owned_tables()
        require_migrated(engine, app_db.mapping().table_prefix)
        summary, destination = deliver_due(
            engine, tables, event_publisher, owner=f"run-{context.run_id}"
        )
    lags = summary.lag_seconds
    attempted = summary.delivered + summary.retried + summary.dead
    metadata: dict[str, object] = {
        "delivered_to": destination,
        "delivered": summary.delivered,
        "retried": summary.retried,
        "dead": summary.dead,
        # Every delivery this run attempted failed: a receiver down or refusing us.
        "all_deliveries_failed": int(attempted > 0 and summary.delivered == 0),
        "stopped_by_budget": int(summary.stopped_by_budget),
        "left_for_next_run": summary.left_for_next_run,
        "delivery_lag_p50_seconds": round(statistics.median(lags), 3) if lags else 0.0,
        "delivery_lag_max_seconds": round(max(lags), 3) if lags else 0.0,
        **reports.outbox_backlog(engine, tables),
    }
    context.log.info(
        delivery_line(
            str(metadata["delivered_to"]), summary.delivered, summary.retried, summary.dead
        )
    )
    return dg.MaterializeResult(metadata=metadata)


def deliver_due(
    engine, tables, event_publisher: EventPublisherResource, owner: str
) -> tuple[DispatchSummary, str]:
    """Every event due in the outbox delivered once to the configured publishers: what it did,
    and to whom. Shared by the delivery step, the redelivery job and the CLI's `deliver`."""
    publishers = event_publisher.build_publishers(engine)
    try:
        dispatcher = event_publisher.dispatcher(engine, tables, publishers, owner=owner)
        return dispatcher.dispatch(), describe_destination(publishers)
    finally:
        close_publishers(publishers)


def audit_metrics(
    counts: dict[str, int],
    oldest_orphan_age_minutes: float,
    orphans_remaining: int,
    held: int,
    run_duration_seconds: float,
) -> dict[str, object]:
    """The operator's figures first, each a number plotted over runs; the per-action counts as one table.

    The UI plots every number, in alphabetical order: a per-action count that is
    zero in nearly every run (``dry-run``, ``released``...) would bury the figures
    that matter, so the counts are one JSON entry instead.
    """
    total = sum(counts.values())
    errors = int(counts.get(verdicts.FAILED, 0)) + int(counts.get(verdicts.QUARANTINED, 0))
    return {
        "orphans_remaining": orphans_remaining,
        "regularized": int(counts.get(verdicts.REGULARIZED, 0)),
        "error_rate": round(errors / total, 4) if total else 0.0,
        "held": held,
        "run_duration_seconds": run_duration_seconds,
        "oldest_orphan_age_minutes": oldest_orphan_age_minutes,
        "audit_rows_by_action": dg.MetadataValue.json(
            {
                "total": total,
                **{action: int(counts.get(action, 0)) for action in verdicts.AUDIT_ACTIONS},
            }
        ),
    }


def _regularize_config(context: dg.AssetExecutionContext) -> dict:
    """The run config given to ``regularized_orders`` in this run (empty when none)."""
    ops = context.run.run_config.get("ops", {})
    return dict((ops.get("regularized_orders", {}) or {}).get("config") or {})


def _run_grace_minutes(context: dg.AssetExecutionContext) -> float:
    """The grace period this run used, so "remaining" means what the run left, not the default."""
    value = _regularize_config(context).get("min_age_minutes")
    return float(value) if isinstance(value, int | float) else float(d.DEFAULT_MIN_AGE_MINUTES)


@dg.asset(
    deps=[order_completed_events],
    group_name=GROUP,
    owners=OWNERS,
    kinds={"sql"},
    retry_policy=TRANSIENT_DB_RETRY,
    partitions_def=SHOP_PARTITIONS,
)
def regularization_audit(
    context: dg.AssetExecutionContext, app_db: AppDatabaseResource
) -> dg.MaterializeResult:
    """The audit trail written by this run: one row per decision on an order, and what the run left.

    `orphans_remaining` and `oldest_orphan_age_minutes` describe the orphans the job
    would still fix after the run (held orders apart), outside the run's own grace period (`grace_minutes`);
    `regularized` counts this run's completed orders; `error_rate` is failed plus
    quarantined over all of this run's audit rows; `held` counts the orphans left
    pending on purpose (inconsistent payments, quarantines: for a human); `run_duration_seconds`
    is the time from the run's start to this step. `audit_rows_by_action` has the
    count of every action. The app's orders are observed again here, so `app_orders`
    shows the counts the run left.
    """
    with permanent_errors_fail_without_retry():
        engine, tables = app_db.get_engine(), app_db.owned_tables()
        schema = app_db.bind()
        require_migrated(engine, app_db.mapping().table_prefix)
    counts = reports.audit_action_counts(engine, tables, context.run_id)
    grace = _run_grace_minutes(context)
    window = RunOptions(min_age_minutes=grace).window(utcnow())
    with engine.connect() as conn:
        remaining = d.orphan_stats(conn, schema, window, sample_size=0, attempts=tables.attempts)
        held = held_in_window(conn, schema, window, remaining.count)
    record = context.instance.get_run_record_by_id(context.run_id)
    started = record.start_time if record is not None else None
    # Up to this last step: the run's duration as far as the run itself can know it.
    duration = round(max(time.time() - started, 0.0), 3) if started else 0.0
    metadata = audit_metrics(counts, remaining.oldest_age_minutes, remaining.count, held, duration)
    # Configuration, not a figure that moves: text, so it is not plotted.
    metadata["grace_minutes"] = dg.MetadataValue.text(f"{grace:g}")
    shown = reports.audit_preview(engine, tables, context.run_id, AUDIT_PREVIEW_ROWS)
    hidden = sum(counts.values()) - len(shown)
    note = f"\n\n{hidden} more row(s) not shown." if hidden > 0 else ""
    metadata["preview"] = dg.MetadataValue.md(
        (
            reports.markdown_table(reports.AUDIT_COLUMNS, shown)
            if shown
            else "No audit rows in this run."
        )
        + note
    )
    context.log_event(
        dg.AssetObservation(asset_key="app_orders", metadata=orders_by_status(app_db))
    )
    return dg.MaterializeResult(metadata=metadata)
