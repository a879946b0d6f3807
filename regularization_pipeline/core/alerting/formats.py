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

    def ui_link(self, alert: Alert) -> str | None:
        """The run's page when the alert names a run, else the UI itself: where to look first."""
        return self.run_url(alert) or (self.ui_url.rstrip("/") if self.ui_url else None)

    def runbook(self, alert: Alert) -> str | None:
        return (
            f"{self.runbook_url}#{alert.incident.replace('_', '-')}" if self.runbook_url else None
        )

    def labelled(self, alert: Alert) -> list[tuple[str, str]]:
        """(address, label) of every link the alert carries, for the formats that show links."""
        ui = self.ui_link(alert)
        found = [(ui, "Dagster run" if self.run_url(alert) else "Dagster UI")] if ui else []
        runbook = self.runbook(alert)
        return found + ([(runbook, "Runbook")] if runbook else [])


def dedup_key(alert: Alert, links: AlertLinks) -> str:
    """One key per incident, environment and shop: a re-notification updates it, RESOLVED
    closes it. A single-shop installation's keys name no shop, as they always did."""
    return f"{SOURCE}/{links.environment}/{alert.key}"


def _iso(epoch: float) -> str:
    return (
        dt.datetime.fromtimestamp(epoch or time.time(), dt.UTC).isoformat().replace("+00:00", "Z")
    )


def render(alert: Alert, fmt: str, links: AlertLinks) -> Any:
    """The JSON body of ``alert`` in one of FORMATS."""
    renderers = {
        "slack": lambda: _slack_message(alert, links),
        "json": lambda: _json_event(alert, links),
        "pagerduty": lambda: _pagerduty_event(alert, links),
        "alertmanager": lambda: _alertmanager_alerts(alert, links),
    }
    if fmt not in renderers:
        raise ValueError(f"unknown alert format {fmt!r}; one of {', '.join(FORMATS)}")
    return renderers[fmt]()


def _slack_escape(text: str) -> str:
    """Slack's three control characters in message text (its "Formatting text" guide)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_message(alert: Alert, links: AlertLinks) -> dict[str, Any]:
    """Slack's incoming-webhook body: the text, then its links as ``<address|label>``."""
    shown = " | ".join(f"<{href}|{label}>" for href, label in links.labelled(alert))
    return {"text": _slack_escape(alert.text) + (f"\n{shown}" if shown else "")}


def plain_text(alert: Alert, links: AlertLinks) -> str:
    """An e-mail's body: the text, then one ``label: address`` line per link."""
    lines = [alert.text, *(f"{label}: {href}" for href, label in links.labelled(alert))]
    return "\n".join(lines) + "\n"


def _details(alert: Alert) -> dict[str, Any]:
    shop = {"shop": alert.shop} if alert.shop is not None else {}
    return {
        "incident": alert.incident,
        **shop,
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
        "links": {
            "run": links.run_url(alert),
            "ui": links.ui_link(alert),
            "runbook": links.runbook(alert),
        },
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
    body["links"] = [{"href": href, "text": text} for href, text in links.labelled(alert)]
    return body


def _alertmanager_alerts(alert: Alert, links: AlertLinks) -> list[dict[str, Any]]:
    """Alertmanager's POST /api/v2/alerts: a list of postable alerts."""
    runbook, run_url = links.runbook(alert), links.ui_link(alert)
    item: dict[str, Any] = {
        "labels": {
            "alertname": alert.incident,
            "severity": alert.severity,
            "environment": links.environment,
            "service": SOURCE,
            # Alertmanager groups and deduplicates by labels: the shop makes each shop's its own.
            **({"shop": alert.shop} if alert.shop is not None else {}),
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
