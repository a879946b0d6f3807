"""core.alerting without Dagster: the incident state machine, and both channels against real local servers."""

from __future__ import annotations

import json

import pytest

from regularization_pipeline.core.alerting import (
    FIRING,
    RESOLVED,
    Alert,
    AlertDeliveryError,
    EmailChannel,
    IncidentBook,
    Observation,
    WebhookChannel,
    deliver,
)
from tests.support.http_stubs import ReceivingApp, Reply
from tests.support.smtp import SmtpServer


def _through_cursor(book: IncidentBook) -> IncidentBook:
    return IncidentBook.from_cursor(book.to_cursor())  # as a sensor stores it between ticks


def test_an_incident_alerts_once_when_it_opens_and_once_when_it_clears():
    book = IncidentBook()
    seen = []
    for firing in [False, True, True, True, False, False, True]:
        book = _through_cursor(book)
        alert = book.observe(Observation("run_failed", firing, f"run r{len(seen)}"))
        seen.append(alert.state if alert else None)
    assert seen == [None, FIRING, None, None, RESOLVED, None, FIRING]


def test_incidents_are_tracked_independently():
    book = IncidentBook()
    assert book.observe(Observation("a", True, "x")).state == FIRING
    assert book.observe(Observation("b", True, "y")).state == FIRING
    assert book.observe(Observation("a", False, "x")).state == RESOLVED
    assert set(book.open) == {"b"}


def test_the_webhook_gets_slack_compatible_json_and_a_refusal_is_an_error():
    with ReceivingApp(script=[Reply(200), Reply(503)]) as app:
        channel = WebhookChannel(app.url + "/hooks/T0KEN")
        channel.send(Alert("dead_events", FIRING, "3 event(s)"))
        with pytest.raises(AlertDeliveryError, match=r"^webhook: HTTP 503$"):
            channel.send(Alert("dead_events", RESOLVED, "0"))
        first, _second = app.wait_for(2)
    assert json.loads(first.body) == {
        "text": "[regularization_pipeline] FIRING: dead_events: 3 event(s)"
    }
    assert first.headers["content-type"] == "application/json"


def test_email_goes_through_smtp_with_login():
    with SmtpServer(login=("alerts", "pw-from-env")) as smtp:
        EmailChannel(
            "127.0.0.1",
            smtp.port,
            "pipeline@example.org",
            ["oncall@example.org"],
            username="alerts",
            password="pw-from-env",
        ).send(Alert("run_failed", FIRING, "run r1 failed"))
        with pytest.raises(
            AlertDeliveryError, match=r"^email: SMTP(AuthenticationError|ServerDisconnected)$"
        ):
            EmailChannel(
                "127.0.0.1",
                smtp.port,
                "pipeline@example.org",
                ["oncall@example.org"],
                username="alerts",
                password="wrong",
                timeout_seconds=2,
            ).send(Alert("run_failed", RESOLVED, "run r2"))
        ((to, message, authenticated),) = smtp.messages()
    assert to == ["oncall@example.org"] and authenticated
    assert message["Subject"] == "[regularization_pipeline] FIRING: run_failed"
    assert (
        message.get_payload().strip()
        == "[regularization_pipeline] FIRING: run_failed: run r1 failed"
    )


def test_a_message_a_channel_refused_is_retried_there_only_on_the_next_call():
    with ReceivingApp(script=[Reply(500)]) as app, SmtpServer() as smtp:
        channels = [
            WebhookChannel(app.url),
            EmailChannel("127.0.0.1", smtp.port, "p@example.org", ["o@example.org"]),
        ]
        book = IncidentBook()
        alert = book.observe(Observation("stale_orphan", True, "oldest 90 min"))

        assert deliver(book, [alert], channels) == ["webhook: HTTP 500"]
        book = _through_cursor(book)
        assert deliver(book, [], channels) == []
        assert deliver(book, [], channels) == []

        assert [r.status for r in app.wait_for(2)] == [500, 200]
        assert len(app.snapshot()) == 2
        assert smtp.subjects() == ["[regularization_pipeline] FIRING: stale_orphan"]
    assert book.undelivered == []
