"""Checks on ``app_orders``: orphans waiting for a fix, and inconsistencies only a human can fix.

Both are non-blocking: a check that *detects* orphans must never stop the asset
that *fixes* them. They run inside the job and on their own (the job `check_app_orders`,
every two minutes and after every other successful run: ``defs/check_jobs.py``); a failure
of ``no_orphaned_pending_orders`` outside those jobs launches the job (see sensors). Each
result says when the shop was read (``shop_read_at``).
Inside the job they run last (``additional_deps`` on ``regularization_audit``),
so the result the UI shows after a run is the state the run left, not the one it fixed.
"""

import datetime as dt

import dagster as dg
import sqlalchemy as sa

from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.decisions.tracker import InconsistencyTracker
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.detection.held import held_orders
from regularization_pipeline.core.detection.scans import inconsistency_report
from regularization_pipeline.core.errors import MigrationsMissingError
from regularization_pipeline.core.regularizer import RunOptions
from regularization_pipeline.core.verdicts import held_metadata
from regularization_pipeline.defs.assets import (
    permanent_errors_fail_without_retry,
    regularization_audit,
)
from regularization_pipeline.defs.resources import AppDatabaseResource
from regularization_pipeline.defs.shops import SHOP_PARTITIONS

ORPHAN_SAMPLE_SIZE = 20
# Evaluated after the run's last asset when both are in the run; alone, the check still runs.
AFTER_THE_RUN = [regularization_audit]


def read_at_metadata(read_at: dt.datetime) -> dg.MetadataValue:
    """When the shop was read (naive UTC, as we store time): the UI shows it as a date."""
    return dg.MetadataValue.timestamp(read_at.replace(tzinfo=dt.UTC))


@dg.asset_check(
    asset="app_orders",
    blocking=False,
    additional_deps=AFTER_THE_RUN,
    partitions_def=SHOP_PARTITIONS,
)
def no_orphaned_pending_orders(
    context: dg.AssetCheckExecutionContext, app_db: AppDatabaseResource
) -> dg.AssetCheckResult:
    """No pending order has a completed payment older than the grace period (a lost webhook).

    Counts the orders the job would fix: warns, never blocks, since the job fixes
    them. Orders paid within the default grace period are left to their webhook, and
    held orders (an inconsistency, a quarantine: they wait for a human) are counted
    apart, under `transactions_consistent`.
    """
    with permanent_errors_fail_without_retry():
        schema = app_db.bind()
    read_at = utcnow()
    window = RunOptions().window(read_at)
    attempts = app_db.owned_tables().attempts
    with app_db.get_engine().connect() as conn:
        # Before `migrate` there is no quarantine to leave out.
        migrated = sa.inspect(conn).has_table(attempts.name)
        stats = d.orphan_stats(
            conn,
            schema,
            window,
            sample_size=ORPHAN_SAMPLE_SIZE,
            attempts=attempts if migrated else None,
        )
    return dg.AssetCheckResult(
        passed=stats.count == 0,
        severity=dg.AssetCheckSeverity.WARN,
        description=None
        if stats.count == 0
        else f"{stats.count} pending order(s) have a completed payment",
        metadata={
            "orphaned_orders": stats.count,
            "oldest_orphan_age_minutes": stats.oldest_age_minutes,
            "grace_minutes": window.min_age_minutes,
            "sample_order_ids": dg.MetadataValue.json([str(i) for i in stats.sample_ids]),
            "shop_read_at": read_at_metadata(read_at),
        },
    )


@dg.asset_check(
    asset="app_orders",
    blocking=False,
    additional_deps=AFTER_THE_RUN,
    partitions_def=SHOP_PARTITIONS,
)
def transactions_consistent(
    context: dg.AssetCheckExecutionContext, app_db: AppDatabaseResource
) -> dg.AssetCheckResult:
    """Every completed payment matches its order: amount, currency, one payment per order, a live order.

    Also counts the orders the job holds and never fixes, by reason
    (`held_orders_<reason>`: each kind below, and `quarantined`).

    Fails with severity ERROR and a count per kind of inconsistency. The
    pipeline reports these orders and never fixes them: they need a human.
    Each evaluation re-examines the orders paid since the last one and the
    inconsistencies still open; the whole history is rescanned once a day.
    """
    with permanent_errors_fail_without_retry():
        schema = app_db.bind()
    read_at = utcnow()
    try:
        report = InconsistencyTracker(app_db.get_engine(), schema).refresh()
        with app_db.get_engine().connect() as conn:
            held = held_orders(conn, schema, report)
    except MigrationsMissingError as exc:
        # Before `migrate` the check still answers, from a full scan that stores nothing.
        context.log.warning(f"{exc}; scanning the whole payment history instead")
        with app_db.get_engine().connect() as conn:
            report = inconsistency_report(conn, schema, sample_size=0)
        held = dict(report.counts)
    metadata: dict[str, object] = {"inconsistencies_total": report.total, **held_metadata(held)}
    metadata.update(
        {f"inconsistent_{kind}": report.counts.get(kind, 0) for kind in d.INCONSISTENCY_KINDS}
    )
    metadata["shop_read_at"] = read_at_metadata(read_at)
    found = ", ".join(f"{n} {kind}" for kind, n in report.counts.items() if n)
    return dg.AssetCheckResult(
        passed=report.total == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"inconsistent payments: {found}" if found else None,
        metadata=metadata,
    )
