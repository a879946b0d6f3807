"""Alert sensors: one message when an incident opens, one when it grows or lingers, one when it clears.

Each sensor asks one observer (``defs/alert_observers.py``) what it sees and keeps the
incident's state in its cursor (``core.alerting.incidents.IncidentBook``): a failure lasting an
hour raises one alert, not twelve, yet a backlog that doubles speaks again. A non-blocking
failed check never fails its run, so run-failure sensors cannot see ``transactions_consistent``:
the observers read the check evaluations themselves. The sensors only read and send messages,
so they run by default; with no channel configured they only log. A setting that cannot be
read never stops them: each tick reports it and uses the default.

With a shops file each sensor observes every shop in turn (its partition's runs, checks and
materializations, its own database) and keeps one incident per shop, named ``<shop>/<condition>``
(``core.alerting.alert.incident_key``); a shop that cannot be read is logged and the others go
on. Without one, the incidents keep the names they always had.
"""

import time
from dataclasses import replace

import dagster as dg
from pydantic import Field

from regularization_pipeline.core.alerting.alert import SEVERITIES, Alert
from regularization_pipeline.core.alerting.incidents import IncidentBook
from regularization_pipeline.core.alerting.routes import deliver, report_test_alert
from regularization_pipeline.core.errors import describe_error
from regularization_pipeline.defs import shops
from regularization_pipeline.defs.alert_observers import (
    Look,
    Observe,
    observe_dead_events,
    observe_error_rate,
    observe_failed_run,
    observe_held_orders,
    observe_inconsistencies,
    observe_outbox_backlog,
    observe_stale_orphan,
    observe_watchdog,
    observe_webhook_path,
)
from regularization_pipeline.defs.jobs import JOB_NAME
from regularization_pipeline.defs.resources import AlertResource

ALERT_INTERVAL_SECONDS = 60
# The asset whose events timeline shows each alert a sensor raised (the shop's orders).
ALERTED_ASSET = dg.AssetKey("app_orders")


def alert_sensor(
    name: str, description: str, observe: Observe, reads_database: bool = False
) -> dg.SensorDefinition:
    """A sensor raising one alert per incident of ``observe``'s condition, and one when it
    clears: per shop with a shops file (each shop's incident its own), in one cursor."""

    @dg.sensor(
        name=name,
        description=description,
        minimum_interval_seconds=ALERT_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys={"alerts", "app_db"} if reads_database else {"alerts"},
    )
    def _sensor(context: dg.SensorEvaluationContext):
        alerts: AlertResource = context.resources.alerts
        now = time.time()
        book = IncidentBook.from_cursor(context.cursor, now)
        warnings = alerts.warnings()
        for warning in warnings:
            context.log.error(f"alert setting: {warning}")
        app_db = context.resources.app_db if reads_database else None
        raised = []
        for shop in list(shops.SHOPS) if shops.SHOPS is not None else [None]:
            look = Look(context.instance, alerts, book, now, context.log, app_db, shop)
            alert = _observe_shop(context, look, observe)
            if alert is not None:
                raised.append(alert)
        channels = alerts.channels()
        errors = deliver(book, raised, channels, now) if channels else []
        context.update_cursor(book.to_cursor())
        if errors:
            context.log.error(
                f"{len(errors)} alert message(s) not delivered, retried next tick: {'; '.join(errors)}"
            )
        settings = f" [alert settings: {'; '.join(warnings)}]" if warnings else ""
        if raised:
            # A tick that raised an alert must not look like an idle one: it also records an
            # observation of app_orders (its events timeline) saying what was sent where.
            return dg.SensorResult(
                skip_reason="; ".join(f"alert {alert.state}: {alert.key}" for alert in raised)
                + ("" if channels else " (logged only: no channel configured)")
                + settings,
                asset_events=[
                    _alert_observation(name, alert, channels, errors) for alert in raised
                ],
            )
        state = "open" if book.open else "none open"
        return dg.SkipReason(f"no change ({state}){settings}")

    return _sensor


def _observe_shop(
    context: dg.SensorEvaluationContext, look: Look, observe: Observe
) -> Alert | None:
    """The alert one shop's observation raises. A shop that cannot be read (down, misconfigured)
    keeps its incidents as they are and is logged by name; the other shops go on."""
    if look.app_db is not None and look.shop is not None:
        look.app_db.for_shop(look.shop)
    try:
        observation = observe(look)
    except Exception as exc:
        if look.shop is None:
            raise
        # One shop's surprise never silences the others' alerts.
        context.log.error(f"{look.label}not observed, state kept: {describe_error(exc)}")
        return None
    finally:
        if look.app_db is not None and look.shop is not None:
            look.app_db.teardown_after_execution(None)  # one engine per shop, closed at once
    if observation is None:
        return None
    if look.shop is not None:
        observation = replace(
            observation, shop=look.shop, detail=f"{look.label}{observation.detail}"
        )
    alert = look.book.observe(observation, look.now, look.alerts.renotify())
    if alert is not None:
        (context.log.warning if alert.state == "firing" else context.log.info)(alert.text)
    return alert


def _alert_observation(
    sensor: str, alert: Alert, channels, errors: list[str]
) -> dg.AssetObservation:
    taking = [c.name for c in channels if alert.severity in c.severities]
    return dg.AssetObservation(
        asset_key=ALERTED_ASSET,
        description=alert.text,
        partition=alert.shop,  # the shop's partition of app_orders, with a shops file
        metadata={
            "alert_sensor": sensor,
            "alert_incident": alert.incident,
            "alert_state": alert.state,
            "alert_severity": alert.severity,
            "alert_channels": ", ".join(taking) or "none (logged only)",
            "alert_undelivered": len(errors),
        },
    )


ALERT_SENSORS = [
    alert_sensor(
        "alert_on_failed_run",
        f"Alerts once when a run of {JOB_NAME} fails, with the reason; resolved when a later run succeeds.",
        observe_failed_run,
    ),
    alert_sensor(
        "alert_on_error_rate",
        "Alerts once when regularized_orders' error_rate exceeds the resource's max_error_rate; "
        "resolved when a later run that processed orders is under it (never by quarantining them).",
        observe_error_rate,
    ),
    alert_sensor(
        "alert_on_inconsistent_transactions",
        "Alerts when transactions_consistent fails (double charge, amount or currency mismatch: a "
        "human must look), again when their number grows; resolved when it passes.",
        observe_inconsistencies,
    ),
    alert_sensor(
        "alert_on_dead_events",
        "Alerts when OrderCompleted events are dead-lettered in the outbox table, again when their "
        "number grows; resolved when none is left.",
        observe_dead_events,
        reads_database=True,
    ),
    alert_sensor(
        "alert_on_outbox_backlog",
        "Alerts when more OrderCompleted events than max_outbox_pending wait in the outbox "
        "(the receiver refuses or is slow); resolved when the backlog is back under it.",
        observe_outbox_backlog,
        reads_database=True,
    ),
    alert_sensor(
        "alert_on_stale_orphan",
        "Alerts when a fixable orphan is still pending after a run, paid more than "
        "stale_orphan_minutes ago: runs are not fixing it; resolved when none is.",
        observe_stale_orphan,
    ),
    alert_sensor(
        "alert_on_webhook_path",
        "Alerts when the job regularized more than max_regularized_per_hour orphans in the last "
        "hour: payment webhooks are being lost; resolved when the rate is back under it.",
        observe_webhook_path,
    ),
    alert_sensor(
        "alert_on_held_orders",
        "Alerts when paid orders are held back (quarantined, or an open inconsistency), with "
        "their ids by reason, again when they grow; resolved when all are released or settled.",
        observe_held_orders,
        reads_database=True,
    ),
    alert_sensor(
        "alert_on_no_successful_run",
        f"Watchdog: alerts when no run of {JOB_NAME} has succeeded for no_success_minutes (schedule "
        "stopped, daemon down, runs stuck in the queue); pings the heartbeat URL after each success.",
        observe_watchdog,
    ),
]


class AlertTestConfig(dg.Config):
    severity: str | None = Field(
        default=None,
        pattern="^(" + "|".join(SEVERITIES) + ")$",
        description="Send to the channels that take this severity only (as a real alert is "
        "routed); every channel when unset.",
    )


@dg.op(tags={"regularization/kind": "operator"})
def send_test_alert_to_channels(
    context: dg.OpExecutionContext, config: AlertTestConfig, alerts: AlertResource
) -> None:
    """Open and resolve a test incident on each alert channel, through its real format and address."""
    for warning in alerts.warnings():
        context.log.error(f"alert setting: {warning}")
    lines, ok = report_test_alert(alerts.channels(), config.severity)
    for line in lines:
        (context.log.info if ok else context.log.error)(line)
    if not ok:
        raise dg.Failure(description="; ".join(lines), allow_retries=False)


@dg.job(tags={"regularization/kind": "operator"})
def send_test_alert():
    """Send a test alert to every alert channel (or those taking one severity): the CLI's
    `send-test-alert`."""
    send_test_alert_to_channels()


ALERT_JOBS = [send_test_alert]
