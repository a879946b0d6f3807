"""Incidents and their alerts: one message when an incident opens, one when it clears.

A sensor observes one condition per tick (the latest run, check evaluation or
materialization) and hands it to an :class:`IncidentBook`, which lives in the
sensor's cursor. The book opens an incident the first time the condition
fires; while it lasts it speaks again only when the incident has grown past a
factor or a step since its last message, or on the reminder interval; the
first observation that it has cleared closes it with a "resolved" message. A
message a channel could not take stays in the book for that channel and is
retried on the next tick, so a receiver that was down still gets it, once.

A webhook renders each message in the operator's format (Slack text, a
generic JSON event, PagerDuty Events API v2, Alertmanager) and signs the body
like OrderCompleted's webhook when a secret is set.

Alert texts carry ids, counts and durations only: never e-mails, names,
amounts, tokens or URLs. Plain Python: no Dagster here.
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Protocol

from regularization_pipeline.core.alerting.alert import (
    FIRING,
    RESOLVED,
    SEVERITIES,
    Alert,
    Observation,
)
from regularization_pipeline.core.alerting.formats import AlertLinks, plain_text, render
from regularization_pipeline.core.delivery.signing import SIGNATURE_HEADER, signature_header

log = logging.getLogger("regularization_pipeline.alerting")


@dataclass(frozen=True)
class Renotify:
    """When an open incident speaks again: grown by ``factor`` or by ``step`` since its last
    message (either; 0 switches one off), or ``remind_seconds`` after it (0: never)."""

    factor: float = 2.0
    step: float = 10.0
    remind_seconds: float = 4 * 3600.0

    def grew(self, last: float | None, size: float | None) -> bool:
        if size is None or last is None or size <= last:
            return False
        return bool(
            (self.factor > 1 and size >= last * self.factor)
            or (self.step > 0 and size - last >= self.step)
        )

    def due(self, notified_at: float, now: float) -> bool:
        return self.remind_seconds > 0 and now - notified_at >= self.remind_seconds


def _fmt(size: float) -> str:
    return f"{size:g}"


@dataclass
class IncidentBook:
    """The state kept in a sensor's cursor: open incidents, messages a channel has yet to take,
    and when the sensor first looked (the watchdog's clock before any run)."""

    # incident key (alert.incident_key) -> {"detail", "size", "opened_at", "notified_at", ...}
    open: dict[str, dict[str, Any]] = field(default_factory=dict)
    undelivered: list[dict[str, object]] = field(
        default_factory=list
    )  # {"channel": name, "alert": {...}}
    since: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)  # a sensor's own small memory
    # incident -> the channels told it opened, for the incidents this tick closed (not stored)
    closed: dict[str, list[str] | None] = field(default_factory=dict, repr=False)

    @classmethod
    def from_cursor(cls, cursor: str | None, now: float | None = None) -> IncidentBook:
        now = time.time() if now is None else now
        if not cursor:
            return cls(since=now)
        data = json.loads(cursor)
        opened = {}
        for incident, state in dict(data.get("open", {})).items():
            if isinstance(state, str):  # a cursor written before sizes and reminders
                state = {"detail": state, "size": None, "opened_at": now, "notified_at": now}
            opened[incident] = state
        return cls(
            open=opened,
            undelivered=list(data.get("undelivered", [])),
            since=data.get("since", now),
            notes=dict(data.get("notes", {})),
        )

    def to_cursor(self) -> str:
        return json.dumps(
            {
                "open": self.open,
                "undelivered": self.undelivered,
                "since": self.since,
                "notes": self.notes,
            },
            sort_keys=True,
        )

    def observe(
        self, observation: Observation, now: float | None = None, renotify: Renotify | None = None
    ) -> Alert | None:
        """The alert this observation raises: on opening, on growth or reminder, and on clearing."""
        now = time.time() if now is None else now
        renotify = renotify or Renotify()
        o = observation
        state = self.open.get(o.key)

        def alert(status: str, detail: str) -> Alert:
            return Alert(o.incident, status, detail, o.severity, o.run_id, now, o.shop)

        if o.firing and state is None:
            self.open[o.key] = {
                "detail": o.detail,
                "size": o.size,
                "opened_at": now,
                "notified_at": now,
                "severity": o.severity,
                "run_id": o.run_id,
                "told": [],  # the channels it was sent to (routes.deliver keeps it)
                # A shop's incident is kept under its key (<shop>/<condition>): the parts, apart.
                **({"incident": o.incident, "shop": o.shop} if o.shop is not None else {}),
            }
            return alert(FIRING, o.detail)
        if not o.firing and state is not None:
            self.closed[o.key] = self.open.pop(o.key).get("told")
            return alert(RESOLVED, o.detail)
        if state is None:
            return None
        minutes = round((now - float(state["opened_at"])) / 60)
        if renotify.grew(state.get("size"), o.size):
            note = f"grew from {_fmt(state['size'])} to {_fmt(o.size)}"  # type: ignore[arg-type]
        elif renotify.due(float(state["notified_at"]), now):
            note = f"still open after {minutes} min"
        else:
            return None
        state.update(size=o.size, notified_at=now, detail=o.detail, run_id=o.run_id)
        return alert(FIRING, f"{note}: {o.detail}")


class Channel(Protocol):
    """Where alerts go: a name (unique among the routes) and the severities it takes."""

    name: str
    severities: tuple[str, ...]

    def send(self, alert: Alert) -> None: ...


class AlertDeliveryError(Exception):
    """A channel did not take a message; the text names the channel, never its address."""


@dataclass
class WebhookChannel:
    """An HTTP webhook: POST the alert as JSON in ``fmt`` (FORMATS), signed when ``secret`` is set.

    The signature header is OrderCompleted's (``X-Regularization-Signature:
    t=<ts>,v1=<hex>``, HMAC-SHA256 over ``<ts>.<body>``), so a receiver
    verifies both with the same code.
    """

    url: str
    timeout_seconds: float = 10.0
    name: str = "webhook"
    fmt: str = "slack"
    links: AlertLinks = field(default_factory=AlertLinks)
    secret: str | None = None
    severities: tuple[str, ...] = SEVERITIES

    def send(self, alert: Alert) -> None:
        import httpx  # loaded when an alert is sent, not by every process loading the sensors

        body = json.dumps(render(alert, self.fmt, self.links), sort_keys=True).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.secret:
            ts = int(time.time())
            headers[SIGNATURE_HEADER] = signature_header([self.secret], ts, body)
        try:
            response = httpx.post(
                self.url, content=body, headers=headers, timeout=self.timeout_seconds
            )
        except httpx.HTTPError as exc:
            raise AlertDeliveryError(f"{self.name}: {type(exc).__name__}") from None
        if not 200 <= response.status_code < 300:
            raise AlertDeliveryError(f"{self.name}: HTTP {response.status_code}")


@dataclass
class EmailChannel:
    """Plain-text e-mail through an SMTP server; STARTTLS (verified) whenever it logs in.

    A login over a connection that was not upgraded is refused: the password
    never crosses the network in clear. ``ca_file`` trusts a private CA.
    """

    host: str
    port: int
    sender: str
    recipients: Sequence[str]
    starttls: bool | None = None  # None: on exactly when a login is set
    username: str | None = None
    password: str | None = None
    timeout_seconds: float = 10.0
    name: str = "email"
    ca_file: str | None = None
    links: AlertLinks = field(default_factory=AlertLinks)
    severities: tuple[str, ...] = SEVERITIES

    @property
    def uses_starttls(self) -> bool:
        return bool(self.username) if self.starttls is None else self.starttls

    def message(self, alert: Alert) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = alert.subject
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message["Date"] = formatdate(alert.at or None, usegmt=True)
        message["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or None)
        message.set_content(plain_text(alert, self.links))
        return message

    def send(self, alert: Alert) -> None:
        if self.username and not self.uses_starttls:
            raise AlertDeliveryError(
                f"{self.name}: refusing to send the SMTP login without STARTTLS"
            )
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_seconds) as smtp:
                if self.uses_starttls:
                    smtp.starttls(context=ssl.create_default_context(cafile=self.ca_file))
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(self.message(alert))
        except (OSError, smtplib.SMTPException) as exc:
            # The server's reply text can quote its greeting or our address: the class and the
            # SMTP status code (535: login refused, 550: mailbox refused...) are what one acts on.
            code = getattr(exc, "smtp_code", None)
            status = f" (SMTP {code})" if isinstance(code, int) else ""
            raise AlertDeliveryError(f"{self.name}: {type(exc).__name__}{status}") from None
