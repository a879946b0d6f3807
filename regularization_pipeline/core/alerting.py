"""Incidents and their alerts: one message when an incident opens, one when it clears.

A sensor observes one condition per tick (the latest run, check evaluation or
materialization) and hands it to an :class:`IncidentBook`, which lives in the
sensor's cursor. The book opens an incident the first time the condition
fires and says nothing more while it lasts; the first observation that it has
cleared closes it with a "resolved" message. A message a channel could not
take stays in the book for that channel and is retried on the next tick, so a
receiver that was down still gets it, once.

Alert texts carry ids, counts and durations only: never e-mails, names,
amounts, tokens or URLs. Plain Python: no Dagster here.
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Protocol

import httpx

log = logging.getLogger("regularization_pipeline.alerting")

FIRING = "firing"
RESOLVED = "resolved"
SOURCE = "regularization_pipeline"
# A receiver down for days must not grow the cursor without bound: the oldest undelivered messages go first.
MAX_UNDELIVERED = 100


@dataclass(frozen=True)
class Observation:
    """What a sensor saw on this tick: whether the incident's condition holds, and why (ids and counts)."""

    incident: str
    firing: bool
    detail: str


@dataclass(frozen=True)
class Alert:
    incident: str
    state: str  # FIRING or RESOLVED
    detail: str

    @property
    def subject(self) -> str:
        return f"[{SOURCE}] {self.state.upper()}: {self.incident}"

    @property
    def text(self) -> str:
        return f"{self.subject}: {self.detail}"

    def to_json(self) -> dict[str, str]:
        return {"incident": self.incident, "state": self.state, "detail": self.detail}


@dataclass
class IncidentBook:
    """The state kept in a sensor's cursor: open incidents, and messages a channel has yet to take."""

    open: dict[str, str] = field(default_factory=dict)  # incident -> detail when it opened
    undelivered: list[dict[str, object]] = field(
        default_factory=list
    )  # {"channel": name, "alert": {...}}

    @classmethod
    def from_cursor(cls, cursor: str | None) -> IncidentBook:
        if not cursor:
            return cls()
        data = json.loads(cursor)
        return cls(open=dict(data.get("open", {})), undelivered=list(data.get("undelivered", [])))

    def to_cursor(self) -> str:
        return json.dumps({"open": self.open, "undelivered": self.undelivered}, sort_keys=True)

    def observe(self, observation: Observation) -> Alert | None:
        """The alert this observation raises: on opening and on clearing, never while it lasts."""
        is_open = observation.incident in self.open
        if observation.firing and not is_open:
            self.open[observation.incident] = observation.detail
            return Alert(observation.incident, FIRING, observation.detail)
        if not observation.firing and is_open:
            del self.open[observation.incident]
            return Alert(observation.incident, RESOLVED, observation.detail)
        return None


class Channel(Protocol):
    name: str

    def send(self, alert: Alert) -> None: ...


class AlertDeliveryError(Exception):
    """A channel did not take a message; the text names the channel, never its address."""


@dataclass
class WebhookChannel:
    """A Slack-compatible incoming webhook: POST ``{"text": ...}`` as JSON."""

    url: str
    timeout_seconds: float = 10.0
    name: str = "webhook"

    def send(self, alert: Alert) -> None:
        try:
            response = httpx.post(self.url, json={"text": alert.text}, timeout=self.timeout_seconds)
        except httpx.HTTPError as exc:
            raise AlertDeliveryError(f"{self.name}: {type(exc).__name__}") from None
        if not 200 <= response.status_code < 300:
            raise AlertDeliveryError(f"{self.name}: HTTP {response.status_code}")


@dataclass
class EmailChannel:
    """Plain-text e-mail through an SMTP server, with optional STARTTLS and login."""

    host: str
    port: int
    sender: str
    recipients: Sequence[str]
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    timeout_seconds: float = 10.0
    name: str = "email"

    def send(self, alert: Alert) -> None:
        message = EmailMessage()
        message["Subject"] = alert.subject
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message.set_content(alert.text + "\n")
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_seconds) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            # The exception text can quote the server's greeting or our address: the class is enough.
            raise AlertDeliveryError(f"{self.name}: {type(exc).__name__}") from None


def deliver(book: IncidentBook, alerts: Sequence[Alert], channels: Sequence[Channel]) -> list[str]:
    """Send earlier undelivered messages, then ``alerts``, to every channel; returns the errors.

    A message a channel refused stays in ``book.undelivered`` for that channel
    only: the next call retries it there and nowhere else.
    """
    queue = list(book.undelivered) + [
        {"channel": c.name, "alert": a.to_json()} for a in alerts for c in channels
    ]
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
                alert.incident,
                alert.state,
                exc,
            )
            left.append(item)
    book.undelivered = left[-MAX_UNDELIVERED:]
    return errors
