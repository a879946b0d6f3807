"""Alert messages rendered in the operator's format: Slack text, a generic JSON event,
PagerDuty Events API v2, Alertmanager-compatible alerts. Plain Python: no Dagster here."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from regularization_pipeline.core.alerting.alert import RESOLVED, SOURCE, Alert

FORMATS = ("slack", "json", "pagerduty", "alertmanager")


@dataclass(frozen=True)
class AlertLinks:
    """What every rendered message carries besides the alert: where it comes from and where to look."""

    environment: str = "production"
    ui_url: str | None = None  # the Dagster UI's base URL: links to the run
    runbook_url: str | None = (
        None  # docs/monitoring.md as the operators read it: links to a section
    )
    routing_key: str | None = None  # PagerDuty's integration key

    def run_url(self, alert: Alert) -> str | None:
        if not (self.ui_url and alert.run_id):
            return None
        return f"{self.ui_url.rstrip('/')}/runs/{alert.run_id}"

    def runbook(self, alert: Alert) -> str | None:
        return (
            f"{self.runbook_url}#{alert.incident.replace('_', '-')}" if self.runbook_url else None
        )


def dedup_key(alert: Alert, links: AlertLinks) -> str:
    """One key per incident and environment: a re-notification updates it, RESOLVED closes it."""
    return f"{SOURCE}/{links.environment}/{alert.incident}"


def _iso(epoch: float) -> str:
    return (
        dt.datetime.fromtimestamp(epoch or time.time(), dt.UTC).isoformat().replace("+00:00", "Z")
    )


def render(alert: Alert, fmt: str, links: AlertLinks) -> Any:
    """The JSON body of ``alert`` in one of FORMATS."""
    renderers = {
        "slack": lambda: {"text": alert.text},
        "json": lambda: _json_event(alert, links),
        "pagerduty": lambda: _pagerduty_event(alert, links),
        "alertmanager": lambda: _alertmanager_alerts(alert, links),
    }
    if fmt not in renderers:
        raise ValueError(f"unknown alert format {fmt!r}; one of {', '.join(FORMATS)}")
    return renderers[fmt]()


def _details(alert: Alert) -> dict[str, Any]:
    return {
        "incident": alert.incident,
        "state": alert.state,
        "detail": alert.detail,
        "run_id": alert.run_id,
    }


def _json_event(alert: Alert, links: AlertLinks) -> dict[str, Any]:
    """The generic JSON event: a dedup key, trigger or resolve, and links."""
    return {
        "dedup_key": dedup_key(alert, links),
        "action": "resolve" if alert.state == RESOLVED else "trigger",
        "severity": alert.severity,
        "environment": links.environment,
        "source": SOURCE,
        "summary": alert.text,
        "details": _details(alert),
        "links": {"run": links.run_url(alert), "runbook": links.runbook(alert)},
        "timestamp": _iso(alert.at),
    }


def _pagerduty_event(alert: Alert, links: AlertLinks) -> dict[str, Any]:
    """PagerDuty Events API v2 (send an event): a resolve carries only the key and the action."""
    resolved = alert.state == RESOLVED
    body: dict[str, Any] = {
        "routing_key": links.routing_key or "",
        "event_action": "resolve" if resolved else "trigger",
        "dedup_key": dedup_key(alert, links),
    }
    if resolved:
        return body
    body["payload"] = {
        "summary": alert.text[:1024],
        "source": f"{SOURCE}/{links.environment}",
        "severity": alert.severity,
        "timestamp": _iso(alert.at),
        "component": SOURCE,
        "group": links.environment,
        "custom_details": _details(alert),
    }
    run_url, runbook = links.run_url(alert), links.runbook(alert)
    body["links"] = [
        {"href": href, "text": text}
        for href, text in ((run_url, "Dagster run"), (runbook, "Runbook"))
        if href
    ]
    return body


def _alertmanager_alerts(alert: Alert, links: AlertLinks) -> list[dict[str, Any]]:
    """Alertmanager's POST /api/v2/alerts: a list of postable alerts."""
    runbook, run_url = links.runbook(alert), links.run_url(alert)
    item: dict[str, Any] = {
        "labels": {
            "alertname": alert.incident,
            "severity": alert.severity,
            "environment": links.environment,
            "service": SOURCE,
        },
        "annotations": {
            "summary": alert.text,
            "description": alert.detail,
            **({"runbook_url": runbook} if runbook else {}),
        },
        "startsAt": _iso(alert.at),
    }
    if alert.state == RESOLVED:
        item["endsAt"] = _iso(alert.at)
    if run_url:
        item["generatorURL"] = run_url
    return [item]
