"""Alert sensors: one message when an incident opens, one when it clears, on every configured channel.

Each sensor reads the latest fact Dagster stored (a finished run, a check
evaluation, a materialization's metadata) and keeps the incident's state in
its cursor (``core.alerting.IncidentBook``): a failure lasting an hour raises
one alert, not twelve. A non-blocking failed check never fails its run, so
run-failure sensors cannot see ``transactions_consistent``: these sensors read
the check evaluations themselves. They only read Dagster's storage and send
messages, so they run by default; with no channel configured they only log.
"""

from collections.abc import Callable

import dagster as dg

from regularization_pipeline.core.alerting import IncidentBook, Observation, deliver
from regularization_pipeline.core.detection import INCONSISTENCY_KINDS
from regularization_pipeline.defs.jobs import JOB_NAME
from regularization_pipeline.defs.resources import AlertResource

ALERT_INTERVAL_SECONDS = 60
CONSISTENCY_CHECK = dg.AssetCheckKey(dg.AssetKey("app_orders"), "transactions_consistent")
ORPHAN_CHECK = dg.AssetCheckKey(dg.AssetKey("app_orders"), "no_orphaned_pending_orders")
# AssetCheckExecutionRecordStatus is not part of Dagster's public API; its values are stable.
CHECK_DONE = {"SUCCEEDED", "FAILED"}

Observe = Callable[[dg.DagsterInstance, AlertResource], Observation | None]


def _latest_metadata(instance: dg.DagsterInstance, asset: str) -> tuple[str, dict] | None:
    """(run id, numeric metadata) of the asset's latest materialization."""
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=1).records
    if not records:
        return None
    metadata = records[0].asset_materialization.metadata
    return records[0].run_id, {
        k: v.value for k, v in metadata.items() if isinstance(v.value, int | float)
    }


def _latest_check(
    instance: dg.DagsterInstance, key: dg.AssetCheckKey
) -> tuple[bool, dict, str] | None:
    """(passed, metadata, run id) of the check's latest completed evaluation; None while none is."""
    record = instance.get_latest_asset_check_evaluation_record(key)
    if record is None or record.status.value not in CHECK_DONE:
        return None
    evaluation = record.event.dagster_event.event_specific_data
    metadata = {
        k: v.value for k, v in evaluation.metadata.items() if isinstance(v.value, int | float)
    }
    return evaluation.passed, metadata, record.run_id or "runless"


def observe_failed_run(instance: dg.DagsterInstance, _alerts: AlertResource) -> Observation | None:
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=JOB_NAME, statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]
        ),
        limit=1,
    )
    if not records:
        return None
    run = records[0].dagster_run
    failed = run.status == dg.DagsterRunStatus.FAILURE
    return Observation(
        "run_failed",
        failed,
        f"run {run.run_id} of {JOB_NAME} {'failed' if failed else 'succeeded'}",
    )


def observe_error_rate(instance: dg.DagsterInstance, alerts: AlertResource) -> Observation | None:
    latest = _latest_metadata(instance, "regularized_orders")
    if latest is None or "error_rate" not in latest[1]:
        return None
    run_id, m = latest
    rate = float(m["error_rate"])
    return Observation(
        "error_rate",
        rate > alerts.max_error_rate,
        f"error rate {rate:g} (limit {alerts.max_error_rate:g}) in run {run_id}: {int(m.get('failed', 0))} failed, "
        f"{int(m.get('quarantined', 0))} quarantined of {int(m.get('processed', 0))} processed",
    )


def observe_inconsistencies(
    instance: dg.DagsterInstance, _alerts: AlertResource
) -> Observation | None:
    latest = _latest_check(instance, CONSISTENCY_CHECK)
    if latest is None:
        return None
    passed, m, run_id = latest
    counts = ", ".join(
        f"{int(m[f'inconsistent_{k}'])} {k}"
        for k in INCONSISTENCY_KINDS
        if m.get(f"inconsistent_{k}")
    )
    detail = (
        f"no inconsistent payment left (run {run_id})"
        if passed
        else f"{int(m.get('inconsistencies_total', 0))} inconsistent payment(s) need a human: {counts} (run {run_id}); "
        "see `regularize-completed-orders list-inconsistencies`"
    )
    return Observation("transactions_inconsistent", not passed, detail)


def observe_dead_events(instance: dg.DagsterInstance, _alerts: AlertResource) -> Observation | None:
    latest = _latest_metadata(instance, "order_completed_events")
    if latest is None or "outbox_dead" not in latest[1]:
        return None
    run_id, m = latest
    dead = int(m["outbox_dead"])
    detail = (
        f"{dead} OrderCompleted event(s) dead-lettered (run {run_id}); fix the receiver, then "
        "`regularize-completed-orders redeliver --all-dead`"
        if dead
        else f"no dead-lettered event left (run {run_id})"
    )
    return Observation("dead_events", dead > 0, detail)


def observe_stale_orphan(instance: dg.DagsterInstance, alerts: AlertResource) -> Observation | None:
    latest = _latest_check(instance, ORPHAN_CHECK)
    if latest is None:
        return None
    _passed, m, run_id = latest
    age = float(m.get("oldest_orphan_age_minutes", 0.0))
    stale = age > alerts.stale_orphan_minutes
    detail = (
        f"the oldest of {int(m.get('orphaned_orders', 0))} orphaned order(s) was paid {age:g} min ago "
        f"(limit {alerts.stale_orphan_minutes:g}): the payment webhook path is likely broken (run {run_id})"
        if stale
        else f"no orphan older than {alerts.stale_orphan_minutes:g} min (run {run_id})"
    )
    return Observation("stale_orphan", stale, detail)


def alert_sensor(name: str, description: str, observe: Observe) -> dg.SensorDefinition:
    """A sensor raising one alert per incident of ``observe``'s condition, and one when it clears."""

    @dg.sensor(
        name=name,
        description=description,
        minimum_interval_seconds=ALERT_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def _sensor(context: dg.SensorEvaluationContext, alerts: AlertResource):
        book = IncidentBook.from_cursor(context.cursor)
        observation = observe(context.instance, alerts)
        alert = book.observe(observation) if observation is not None else None
        if alert is not None:
            (context.log.warning if alert.state == "firing" else context.log.info)(alert.text)
        channels = alerts.channels()
        errors = deliver(book, [alert] if alert else [], channels) if channels else []
        context.update_cursor(book.to_cursor())
        if errors:
            context.log.error(
                f"{len(errors)} alert message(s) not delivered, retried next tick: {'; '.join(errors)}"
            )
        if alert is not None:
            return dg.SkipReason(
                f"alert {alert.state}: {alert.incident}"
                + ("" if channels else " (logged only: no channel configured)")
            )
        state = (
            "open" if observation is not None and observation.incident in book.open else "none open"
        )
        return dg.SkipReason(f"no change ({state})")

    return _sensor


ALERT_SENSORS = [
    alert_sensor(
        "alert_on_failed_run",
        f"Alerts once when a run of {JOB_NAME} fails; resolved when a later run succeeds.",
        observe_failed_run,
    ),
    alert_sensor(
        "alert_on_error_rate",
        "Alerts once when regularized_orders' error_rate exceeds the resource's "
        "max_error_rate; resolved when a later run is under it.",
        observe_error_rate,
    ),
    alert_sensor(
        "alert_on_inconsistent_transactions",
        "Alerts once when transactions_consistent fails (double charge, "
        "amount or currency mismatch: a human must look); resolved when it passes.",
        observe_inconsistencies,
    ),
    alert_sensor(
        "alert_on_dead_events",
        "Alerts once when OrderCompleted events are dead-lettered (outbox_dead > 0); "
        "resolved when none is left.",
        observe_dead_events,
    ),
    alert_sensor(
        "alert_on_stale_orphan",
        "Alerts once when the oldest orphan waits longer than stale_orphan_minutes: "
        "the payment webhook path is likely broken; resolved when none does.",
        observe_stale_orphan,
    ),
]
