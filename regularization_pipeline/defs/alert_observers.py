"""What each alert sensor observes on a tick: the latest fact Dagster stored (a finished run, a
check evaluation with a result, a materialization's metadata) or, for held orders and the
outbox, our own tables, turned into one :class:`Observation` (firing or not, why, how big).

The sensors that turn observations into alerts are in ``defs/alerts.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg
import sqlalchemy as sa

# Dagster 1.13 reads one partition's check history only with this filter, which it does not
# export (tests/dagster/test_shops_alerts.py fails if the history of another shop is read).
from dagster._core.event_api import PartitionKeyFilter

from regularization_pipeline.core.alerting.alert import Observation, incident_key
from regularization_pipeline.core.alerting.incidents import IncidentBook
from regularization_pipeline.core.detection.held import held_order_ids
from regularization_pipeline.core.detection.orphans import INCONSISTENCY_KINDS
from regularization_pipeline.core.errors import RegularizationError, describe_error
from regularization_pipeline.core.operations.reports import outbox_backlog
from regularization_pipeline.core.redaction import redact
from regularization_pipeline.core.verdicts import QUARANTINED
from regularization_pipeline.defs.jobs import IN_FLIGHT_STATUSES, JOB_NAME
from regularization_pipeline.defs.resources import AlertResource, AppDatabaseResource
from regularization_pipeline.defs.shops import PARTITION_TAG, shop_of

CONSISTENCY_CHECK = dg.AssetCheckKey(dg.AssetKey("app_orders"), "transactions_consistent")
ORPHAN_CHECK = dg.AssetCheckKey(dg.AssetKey("app_orders"), "no_orphaned_pending_orders")
# A run records its checks as PLANNED when it is queued and a failed run leaves them so:
# only an evaluation with a result says anything about the shop. Compared by the status's
# value: its enum is not part of Dagster's public API.
WITH_RESULT = {"SUCCEEDED", "FAILED"}
# How many recent executions are looked through for one with a result.
CHECK_HISTORY = 25
HELD_ID_SAMPLE = 10
FAILURE_REASON_CHARS = 300


@dataclass
class Look:
    """What an observer may use on one tick."""

    instance: dg.DagsterInstance
    alerts: AlertResource
    book: IncidentBook
    now: float
    log: Any
    app_db: AppDatabaseResource | None = None
    # The shop of the shops file observed (its app_db is that shop's); None: the single shop.
    shop: str | None = None

    @property
    def label(self) -> str:
        """What a line about this shop starts with ("" for the single shop)."""
        return f"shop {self.shop}: " if self.shop is not None else ""

    def runs(self, statuses, limit: int) -> list[dg.RunRecord]:
        """The job's latest runs in ``statuses`` (of this shop: its partition)."""
        tags = {PARTITION_TAG: self.shop} if self.shop is not None else None
        return list(
            self.instance.get_run_records(
                filters=dg.RunsFilter(job_name=JOB_NAME, statuses=statuses, tags=tags), limit=limit
            )
        )

    def records(self, asset: str, after: float | None = None, limit: int = 1):
        """The asset's latest materializations (of this shop's partition), newest first."""
        partitions = [self.shop] if self.shop is not None else None
        records_filter = dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset), asset_partitions=partitions, after_timestamp=after
        )
        return self.instance.fetch_materializations(records_filter, limit=limit).records


Observe = Callable[[Look], Observation | None]


def _numbers(metadata) -> dict[str, float]:
    return {k: v.value for k, v in metadata.items() if isinstance(v.value, int | float)}


def _latest_metadata(look: Look, asset: str) -> tuple[str, dict, float] | None:
    """(run id, numeric metadata, timestamp) of the asset's latest materialization (the shop's)."""
    records = look.records(asset)
    if not records:
        return None
    record = records[0]
    return record.run_id, _numbers(record.asset_materialization.metadata), record.timestamp


def _latest_check(look: Look, key: dg.AssetCheckKey) -> tuple[bool, dict, str, float] | None:
    """(passed, metadata, run id, timestamp) of the check's latest evaluation with a result
    (on the shop's partition)."""
    partition = PartitionKeyFilter(key=look.shop) if look.shop is not None else None
    history = look.instance.event_log_storage.get_asset_check_execution_history(
        key, limit=CHECK_HISTORY, partition_filter=partition
    )
    record = next(
        (r for r in history if r.status.value in WITH_RESULT and r.event is not None), None
    )
    if record is None:
        return None
    evaluation = record.event.dagster_event.event_specific_data
    return (
        evaluation.passed,
        _numbers(evaluation.metadata),
        record.run_id or "runless",
        record.event.timestamp,
    )


def _failure_reason(instance: dg.DagsterInstance, run_id: str) -> str:
    """The first line of what failed the run (its failed step's error, else the run's own message)."""
    for of_type in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE):
        for entry in instance.all_logs(run_id, of_type=of_type):
            event = entry.dagster_event
            data = event.event_specific_data
            failure = getattr(data, "user_failure_data", None)
            error = getattr(data, "error", None)
            text = (
                (failure.description if failure is not None else None)
                or _raised_message(error)
                or event.message
                or ""
            )
            text = text.strip().splitlines()[0] if text.strip() else ""
            if text:
                step = f"{event.step_key}: " if event.step_key else ""
                return redact(step + text)[:FAILURE_REASON_CHARS]
    return "no reason recorded"


def _raised_message(error) -> str | None:
    """The message of what the step raised (a shop's database refusing the connection, in our
    words), not of the error Dagster wraps it in ("Error occurred while executing op")."""
    while error is not None and error.cause is not None and error.cls_name.startswith("Dagster"):
        error = error.cause
    return error.message if error is not None else None


def observe_failed_run(look: Look) -> Observation | None:
    records = look.runs([dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE], limit=1)
    if not records:
        return None
    run = records[0].dagster_run
    failed = run.status == dg.DagsterRunStatus.FAILURE
    detail = f"run {run.run_id} of {JOB_NAME} {'failed' if failed else 'succeeded'}"
    if failed:
        detail += f": {_failure_reason(look.instance, run.run_id)}"
    return Observation("run_failed", failed, detail, run_id=run.run_id)


def observe_error_rate(look: Look) -> Observation | None:
    latest = _latest_metadata(look, "regularized_orders")
    if latest is None or "error_rate" not in latest[1]:
        return None
    run_id, m, _at = latest
    if not m.get("processed"):
        # A run that processed nothing proves nothing: quarantined orders are skipped, not fixed.
        return None
    rate = float(m["error_rate"])
    limit = look.alerts.max_error_rate
    return Observation(
        "error_rate",
        rate > limit,
        f"error rate {rate:g} (limit {limit:g}) in run {run_id}: {int(m.get('failed', 0))} failed, "
        f"{int(m.get('quarantined', 0))} quarantined of {int(m.get('processed', 0))} processed",
        run_id=run_id,
    )


def observe_inconsistencies(look: Look) -> Observation | None:
    latest = _latest_check(look, CONSISTENCY_CHECK)
    if latest is None:
        return None
    passed, m, run_id, _at = latest
    total = int(m.get("inconsistencies_total", 0))
    counts = ", ".join(
        f"{int(m[f'inconsistent_{k}'])} {k}"
        for k in INCONSISTENCY_KINDS
        if m.get(f"inconsistent_{k}")
    )
    detail = (
        f"no inconsistent payment left (run {run_id})"
        if passed
        else f"{total} inconsistent payment(s) need a human: {counts} (run {run_id}); "
        "see `regularize-completed-orders list-inconsistencies`"
    )
    return Observation(
        "transactions_inconsistent",
        not passed,
        detail,
        size=total,
        severity="warning",
        run_id=run_id,
    )


def _outbox(look: Look) -> dict[str, int] | None:
    """The outbox's pending and dead counts, read from the table itself: a delivery that stopped
    (its step skipped, failing or never run) must not freeze the figures the alerts read."""
    if look.app_db is None:
        return None
    try:
        return outbox_backlog(look.app_db.get_engine(), look.app_db.owned_tables())
    except (sa.exc.SQLAlchemyError, RegularizationError) as exc:
        look.log.error(f"{look.label}outbox not read, state kept: {describe_error(exc)}")
        return None


def observe_dead_events(look: Look) -> Observation | None:
    counts = _outbox(look)
    if counts is None:
        return None
    dead = counts["outbox_dead"]
    detail = (
        f"{dead} OrderCompleted event(s) dead-lettered in the outbox; fix the receiver, then "
        "`regularize-completed-orders redeliver --all-dead`"
        if dead
        else "no dead-lettered event left in the outbox"
    )
    return Observation("dead_events", dead > 0, detail, size=dead)


def observe_outbox_backlog(look: Look) -> Observation | None:
    counts = _outbox(look)
    if counts is None:
        return None
    pending, limit = counts["outbox_pending"], look.alerts.max_outbox_pending
    detail = (
        f"{pending} OrderCompleted event(s) wait in the outbox (limit {limit:g}, read from the table): "
        "the receiver is refusing or slow, or delivery is not running; they are retried with backoff"
        if pending > limit
        else f"{pending} event(s) wait in the outbox (limit {limit:g}, read from the table)"
    )
    return Observation("outbox_backlog", pending > limit, detail, size=pending, severity="warning")


def observe_stale_orphan(look: Look) -> Observation | None:
    """The newest count of fixable orphans: the orphan check's, or the audit's when a run ended after it.

    The audit counts what the run left, after its fix; the check inside a run may
    have looked before the fix.
    """
    check = _latest_check(look, ORPHAN_CHECK)
    audit = _latest_metadata(look, "regularization_audit")
    sources = []
    if check is not None:
        _passed, m, run_id, at = check
        sources.append((at, run_id, int(m.get("orphaned_orders", 0)), m))
    if audit is not None and "orphans_remaining" in audit[1]:
        run_id, m, at = audit
        sources.append((at, run_id, int(m["orphans_remaining"]), m))
    if not sources:
        return None
    _at, run_id, count, m = max(sources, key=lambda source: source[0])
    age = float(m.get("oldest_orphan_age_minutes", 0.0)) if count else 0.0
    limit = look.alerts.stale_orphan_minutes
    stale = age > limit
    detail = (
        f"the oldest of {count} fixable orphaned order(s) was paid {age:.0f} min ago (limit {limit:g}) "
        f"and is still pending: runs are not fixing it (run {run_id})"
        if stale
        else f"no fixable orphan older than {limit:g} min (run {run_id})"
    )
    return Observation("stale_orphan", stale, detail, size=count, run_id=run_id)


def observe_webhook_path(look: Look) -> Observation | None:
    """Orphans the job regularized in the last hour: each one is a payment webhook that was lost."""
    records = look.records("regularized_orders", after=look.now - 3600, limit=1000)
    if not records:
        return None
    fixed = sum(
        int(_numbers(r.asset_materialization.metadata).get("regularized", 0)) for r in records
    )
    limit = look.alerts.max_regularized_per_hour
    detail = (
        f"{fixed} orphaned order(s) regularized in the last hour (limit {limit:g}): payment webhooks are "
        "being lost; check the payment provider's webhook deliveries and the shop's webhook endpoint"
        if fixed > limit
        else f"{fixed} orphaned order(s) regularized in the last hour (limit {limit:g})"
    )
    return Observation("webhook_path", fixed > limit, detail, size=fixed, run_id=records[0].run_id)


def observe_held_orders(look: Look) -> Observation | None:
    if look.app_db is None:
        return None
    try:
        with look.app_db.get_engine().connect() as conn:
            held = held_order_ids(conn, look.app_db.bind())
    except sa.exc.SQLAlchemyError as exc:
        look.log.error(f"{look.label}held orders not read, state kept: {describe_error(exc)}")
        return None
    except RegularizationError as exc:  # the URL not set, the mapping refused: our one line
        look.log.error(f"{look.label}held orders not read, state kept: {exc}")
        return None
    total = sum(len(ids) for ids in held.values())
    parts = []
    for reason, ids in held.items():
        shown = ", ".join(str(i) for i in ids[:HELD_ID_SAMPLE])
        more = f" and {len(ids) - HELD_ID_SAMPLE} more" if len(ids) > HELD_ID_SAMPLE else ""
        parts.append(f"{len(ids)} {reason} (order {shown}{more})")
    detail = (
        f"{total} paid order(s) held back from regularization: {'; '.join(parts)}; {_held_advice(held)}"
        if total
        else "no paid order is held back"
    )
    return Observation("orders_held", total > 0, detail, size=total, severity="warning")


def _held_advice(held: dict[str, list]) -> str:
    """What to do, for the reasons present only: no release advice without a quarantine."""
    advice = []
    if held.get(QUARANTINED):
        advice.append(
            "quarantined: fix the cause, then `regularize-completed-orders release --order-id`"
        )
    if any(ids for reason, ids in held.items() if reason != QUARANTINED):
        advice.append(
            "inconsistent: settle the payment (`regularize-completed-orders list-inconsistencies`)"
        )
    return "; ".join(advice)


def _ping_heartbeat(look: Look, run_id: str) -> None:
    """Tell the external dead-man's switch about a new successful run, once per run."""
    url, note = look.alerts.heartbeat_url, incident_key("heartbeat_run", look.shop)
    if not url or look.book.notes.get(note) == run_id:
        return
    import httpx  # only where a heartbeat is configured

    try:
        response = httpx.get(url, timeout=look.alerts.timeout_seconds)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        look.log.warning(f"heartbeat not sent, retried next tick: {type(exc).__name__}")
        return
    look.book.notes[note] = run_id


def observe_watchdog(look: Look) -> Observation | None:
    """No successful run for no_success_minutes: schedule stopped, daemon down, runs stuck or failing."""
    if look.shop is not None and not shop_of(look.shop).scheduled:
        return None  # launched by hand only: no schedule to watch
    succeeded = look.runs([dg.DagsterRunStatus.SUCCESS], limit=1)
    last = succeeded[0] if succeeded else None
    if last is not None:
        _ping_heartbeat(look, last.dagster_run.run_id)
        at = last.end_time or last.create_timestamp.timestamp()
    else:
        at = look.book.since or look.now
    minutes = (look.now - at) / 60
    limit = look.alerts.no_success_minutes
    waiting = look.runs(IN_FLIGHT_STATUSES, limit=100)
    queued = sum(1 for r in waiting if r.dagster_run.status == dg.DagsterRunStatus.QUEUED)
    since = (
        f"last success: run {last.dagster_run.run_id}, {minutes:.0f} min ago"
        if last
        else f"no success since the watchdog started {minutes:.0f} min ago"
    )
    firing = minutes > limit
    detail = (
        f"no run of {JOB_NAME} has succeeded for over {limit:g} min ({since}; {queued} queued, "
        f"{len(waiting) - queued} starting or running): is the schedule on, the daemon up, "
        "the run queue moving?"
        if firing
        else f"{JOB_NAME} succeeded {minutes:.0f} min ago"
    )
    return Observation(
        "no_successful_run",
        firing,
        detail,
        severity="critical",
        run_id=last.dagster_run.run_id if last else None,
    )
