"""Alert routes: which channel takes which message, and sending to them.

Each channel takes the severities of its route (a pager takes ``critical``, a chat channel the
warnings): an alert goes to every channel that takes its severity, and its resolution to the
channels that were told it opened. A channel added while an incident is open is sent that
incident once, on the next tick, and then follows it like the others.

Routes come from a routes file (YAML, ``routes:`` a list of webhooks, each with its name,
format, address and severities, and of e-mail routes, each with its recipients, sent through
the SMTP server of the ``REGULARIZATION_ALERT_SMTP_*`` variables) and from the single-channel
variables (one route each):

    routes:
      - name: pager
        format: pagerduty
        url: https://events.pagerduty.com/v2/enqueue
        routing_key_env: PAGERDUTY_ROUTING_KEY
        severities: [critical]
      - name: chat
        format: slack
        url_env: SLACK_ALERT_WEBHOOK_URL
        severities: [error, warning]
      - name: finance
        format: email
        to: [payments@example.com]
        severities: [warning]

An address or key that embeds a token is better named by its variable (``*_env``) than
written in the file. Plain Python: no Dagster here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from regularization_pipeline.core.alerting.alert import FIRING, RESOLVED, SEVERITIES, Alert
from regularization_pipeline.core.alerting.formats import FORMATS, AlertLinks
from regularization_pipeline.core.alerting.incidents import (
    AlertDeliveryError,
    Channel,
    IncidentBook,
    WebhookChannel,
)
from regularization_pipeline.core.config_files import read_yaml_mapping, validate_or_explain
from regularization_pipeline.core.errors import ConfigurationError

log = logging.getLogger("regularization_pipeline.alerting")

# A receiver down for days must not grow the cursor without bound: the oldest undelivered messages go first.
MAX_UNDELIVERED = 100
TEST_INCIDENT = "test_alert"

# A route of this format is e-mail: its recipients, through the variables' SMTP server.
EMAIL = "email"

Severity = Literal[SEVERITIES]  # type: ignore[valid-type]
Format = Literal[(*FORMATS, EMAIL)]  # type: ignore[valid-type]


class RouteSpec(BaseModel):
    """One route of the routes file: a webhook (``url`` or ``url_env``) or e-mail (``to``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    format: Format = "slack"
    url: str | None = None
    url_env: str | None = None
    secret_env: str | None = None
    routing_key_env: str | None = None
    to: tuple[str, ...] = ()
    severities: tuple[Severity, ...] = SEVERITIES  # type: ignore[assignment]

    @model_validator(mode="after")
    def _one_address(self) -> RouteSpec:
        if self.format == EMAIL:
            if self.url or self.url_env or self.secret_env or self.routing_key_env:
                raise ValueError(
                    "an email route takes `to`, not url, url_env, secret_env or routing_key_env"
                )
            if not self.to or not all("@" in address for address in self.to):
                raise ValueError("an email route needs `to`: its recipients' addresses")
        elif self.to:
            raise ValueError("`to` is for email routes; a webhook takes url or url_env")
        elif bool(self.url) == bool(self.url_env):
            raise ValueError("give exactly one of url and url_env")
        if not self.severities:
            raise ValueError("severities is empty: the route would take nothing")
        return self


class RoutesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    routes: list[RouteSpec] = Field(min_length=1)


def read_routes_file(path: str) -> list[RouteSpec]:
    """The routes of ``path``, or a ConfigurationError naming the file and the problem."""
    what = "alert routes file"
    routes = validate_or_explain(RoutesFile, read_yaml_mapping(path, what), what).routes
    names = [r.name for r in routes]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigurationError(f"{what} {path!r} names route {', '.join(twice)} twice")
    return routes


def _variable(name: str | None, route: str) -> str | None:
    if name is None:
        return None
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigurationError(f"alert route {route!r}: {name} is not set")
    return value


def webhook_of(spec: RouteSpec, links: AlertLinks, timeout_seconds: float) -> WebhookChannel:
    """The channel of one route, its address and secrets read from their variables now."""
    key = _variable(spec.routing_key_env, spec.name)
    return WebhookChannel(
        spec.url or str(_variable(spec.url_env, spec.name)),
        timeout_seconds=timeout_seconds,
        name=spec.name,
        fmt=spec.format,
        links=AlertLinks(links.environment, links.ui_url, links.runbook_url, key),
        secret=_variable(spec.secret_env, spec.name),
        severities=tuple(spec.severities),
    )


def _takes(channel: Channel, severity: str) -> bool:
    return severity in getattr(channel, "severities", SEVERITIES)


def _item(channel: Channel, alert: Alert) -> dict[str, object]:
    return {"channel": channel.name, "alert": alert.to_json()}


def _catch_up(book: IncidentBook, channels: Sequence[Channel], now: float) -> list[dict]:
    """The open incidents a channel that takes them was never sent: once each, as they stand."""
    names = {c.name for c in channels}
    items = []
    for key, state in book.open.items():
        if "told" not in state:  # opened by an older version: it told the channels of its day
            state["told"] = sorted(names)
            continue
        # A channel switched off forgets; switched on again it is told again, once.
        told = [name for name in state["told"] if name in names]
        severity = str(state.get("severity") or "error")
        minutes = round((now - float(state.get("opened_at", now))) / 60)
        for channel in channels:
            if channel.name in told or not _takes(channel, severity):
                continue
            detail = f"open for {minutes} min: {state['detail']}"
            incident, shop = state.get("incident", key), state.get("shop")
            alert = Alert(incident, FIRING, detail, severity, state.get("run_id"), now, shop)
            items.append(_item(channel, alert))
            told.append(channel.name)
        state["told"] = told
    return items


def _routed(book: IncidentBook, alerts: Sequence[Alert], channels: Sequence[Channel]) -> list:
    """Each alert for each channel that takes its severity; a resolution only where it was told."""
    items = []
    for alert in alerts:
        told = book.closed.get(alert.key)
        for channel in channels:
            if not _takes(channel, alert.severity):
                continue
            if alert.state == RESOLVED and told is not None and channel.name not in told:
                continue
            items.append(_item(channel, alert))
            state = book.open.get(alert.key)
            if alert.state == FIRING and state is not None:
                state.setdefault("told", [])
                if channel.name not in state["told"]:
                    state["told"].append(channel.name)
    return items


def deliver(
    book: IncidentBook,
    alerts: Sequence[Alert],
    channels: Sequence[Channel],
    now: float | None = None,
) -> list[str]:
    """Send earlier undelivered messages, then ``alerts``, then what a new channel was never told;
    returns the errors.

    A message a channel refused stays in ``book.undelivered`` for that channel
    only: the next call retries it there and nowhere else.
    """
    now = time.time() if now is None else now
    queue = list(book.undelivered) + _routed(book, alerts, channels)
    queue += _catch_up(book, channels, now)
    by_name = {c.name: c for c in channels}
    left, errors = [], []
    for item in queue:
        channel = by_name.get(str(item["channel"]))
        if channel is None:  # the channel was switched off meanwhile
            continue
        alert = Alert(**item["alert"])  # type: ignore[arg-type]
        try:
            channel.send(alert)
        except AlertDeliveryError as exc:
            errors.append(str(exc))
            log.warning(
                "alert %s (%s) not delivered: %s; retried on the next tick",
                alert.key,
                alert.state,
                exc,
            )
            left.append(item)
    book.undelivered = left[-MAX_UNDELIVERED:]
    return errors


def send_test_alert(
    channels: Sequence[Channel], severity: str | None = None, now: float | None = None
) -> list[tuple[str, str | None]]:
    """A test incident opened and resolved on each channel (each one that takes ``severity``
    when given), through the channels' real formats, signatures and addresses.

    Returns (channel, None when it took both messages, else the error) per channel tried.
    """
    now = time.time() if now is None else now
    chosen = [c for c in channels if severity is None or _takes(c, severity)]
    results: list[tuple[str, str | None]] = []
    for channel in chosen:
        shown = severity or (getattr(channel, "severities", SEVERITIES) or SEVERITIES)[0]
        detail = (
            f"test alert to channel {channel.name} (severity {shown}), sent by "
            "`regularize-completed-orders send-test-alert`; no action needed"
        )
        try:
            for state in (FIRING, RESOLVED):
                channel.send(Alert(TEST_INCIDENT, state, detail, shown, None, now))
        except AlertDeliveryError as exc:
            results.append((channel.name, str(exc)))
            continue
        results.append((channel.name, None))
    return results


NO_CHANNEL = (
    "no alert channel is configured: set REGULARIZATION_ALERT_WEBHOOK_URL, "
    "REGULARIZATION_ALERT_ROUTES_FILE or REGULARIZATION_ALERT_SMTP_HOST"
)


def report_test_alert(
    channels: Sequence[Channel], severity: str | None = None
) -> tuple[list[str], bool]:
    """Send the test alert (send_test_alert) and say how it went: one line per channel, and
    whether every channel tried took it (False too when none was tried)."""
    if not channels:
        return [NO_CHANNEL], False
    results = send_test_alert(channels, severity)
    if not results:
        return [f"no alert channel takes severity {severity}: such alerts are only logged"], False
    lines = [
        f"{name}: {'test alert sent and resolved' if error is None else f'not delivered ({error})'}"
        for name, error in results
    ]
    return lines, all(error is None for _name, error in results)
