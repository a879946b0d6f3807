"""core.alerting without Dagster: the incident state machine, and both channels against real local servers."""

from __future__ import annotations

import json

import pytest

from regularization_pipeline.core.alerting.alert import FIRING, SEVERITIES, Alert, Observation
from regularization_pipeline.core.alerting.formats import AlertLinks
from regularization_pipeline.core.alerting.incidents import (
    RESOLVED,
    AlertDeliveryError,
    EmailChannel,
    IncidentBook,
    Renotify,
    WebhookChannel,
)
from regularization_pipeline.core.alerting.routes import deliver
from regularization_pipeline.core.delivery.signing import SIGNATURE_HEADER, verify_signature
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


def test_email_logs_in_only_over_verified_starttls_and_carries_date_and_message_id():
    with SmtpServer(login=("alerts", "pw-from-env"), tls=True) as smtp:

        def channel(**kwargs) -> EmailChannel:
            settings = {"username": "alerts", "password": "pw-from-env", "timeout_seconds": 5}
            return EmailChannel(
                "127.0.0.1",
                smtp.port,
                "pipeline@example.org",
                ["oncall@example.org"],
                **{**settings, **kwargs},
            )

        channel(ca_file=smtp.ca_file).send(Alert("run_failed", FIRING, "run r1 failed", at=1.7e9))
        with pytest.raises(
            AlertDeliveryError, match=r"^email: SMTP(AuthenticationError|ServerDisconnected)$"
        ):
            channel(ca_file=smtp.ca_file, password="wrong").send(
                Alert("run_failed", RESOLVED, "r2")
            )
        with pytest.raises(AlertDeliveryError, match=r"^email: SSLCertVerificationError$"):
            channel().send(Alert("run_failed", RESOLVED, "r2"))  # the self-signed CA is not trusted
        with pytest.raises(
            AlertDeliveryError, match=r"^email: refusing to send the SMTP login without STARTTLS$"
        ):
            channel(starttls=False).send(Alert("run_failed", RESOLVED, "r2"))
        ((to, message, authenticated),) = smtp.messages()
    assert to == ["oncall@example.org"] and authenticated
    assert message["Subject"] == "[regularization_pipeline] FIRING: run_failed"
    assert message["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert message["Message-ID"].endswith("@example.org>")
    assert (
        message.get_payload().strip()
        == "[regularization_pipeline] FIRING: run_failed: run r1 failed"
    )


def test_an_open_incident_speaks_again_when_it_grows_past_the_factor_or_step_and_on_reminder():
    book, renotify = IncidentBook(since=0), Renotify(factor=2, step=10, remind_seconds=3600)

    def see(size: int, at: float) -> str | None:
        nonlocal book
        book = _through_cursor(book)
        alert = book.observe(
            Observation("dead_events", size > 0, f"{size} dead", size=size), at, renotify
        )
        return alert and alert.detail

    assert see(17, 0) == "17 dead"
    assert see(20, 60) is None  # +3, x1.2
    assert see(54, 120) == "grew from 17 to 54: 54 dead"  # x3.2
    assert see(60, 180) is None
    assert see(64, 240) == "grew from 54 to 64: 64 dead"  # +10
    assert see(64, 240 + 3599) is None
    assert see(64, 240 + 3600) == "still open after 64 min: 64 dead"
    assert see(0, 4000) == "0 dead"
    assert see(1, 4060) == "1 dead"  # a new incident


def test_a_cursor_written_before_sizes_keeps_its_open_incidents():
    old = json.dumps({"open": {"run_failed": "run r1 failed"}, "undelivered": []})
    book = IncidentBook.from_cursor(old, now=100.0)
    assert book.observe(Observation("run_failed", True, "run r2 failed"), now=160.0) is None
    assert book.observe(Observation("run_failed", False, "ok"), now=220.0).state == RESOLVED


LINKS = AlertLinks(
    environment="staging",
    ui_url="https://dagster.example.org/",
    runbook_url="https://docs.example.org/monitoring",
    routing_key="R" * 32,
)


def _sent(fmt: str, *alerts: Alert, secret: str | None = None) -> list:
    with ReceivingApp() as app:
        channel = WebhookChannel(app.url, fmt=fmt, links=LINKS, secret=secret)
        for alert in alerts:
            channel.send(alert)
        return app.wait_for(len(alerts))


FIRED = Alert("dead_events", FIRING, "3 event(s)", "error", "run-1", 1.7e9)
CLEARED = Alert("dead_events", RESOLVED, "0 event(s)", "error", "run-2", 1.7e9 + 60)


def test_pagerduty_events_v2_has_its_required_fields_and_one_dedup_key_per_incident():
    trigger, resolve = [json.loads(r.body) for r in _sent("pagerduty", FIRED, CLEARED)]
    # Required by Events API v2: routing_key, event_action, and for a trigger payload.summary/source/severity.
    assert trigger["routing_key"] == "R" * 32 and trigger["event_action"] == "trigger"
    payload = trigger["payload"]
    assert payload["summary"] == FIRED.text and len(payload["summary"]) <= 1024
    assert payload["source"] == "regularization_pipeline/staging"
    assert payload["severity"] in SEVERITIES
    assert payload["timestamp"] == "2023-11-14T22:13:20Z"
    assert trigger["links"] == [
        {"href": "https://dagster.example.org/runs/run-1", "text": "Dagster run"},
        {"href": "https://docs.example.org/monitoring#dead-events", "text": "Runbook"},
    ]
    assert resolve == {
        "routing_key": "R" * 32,
        "event_action": "resolve",
        "dedup_key": trigger["dedup_key"],
    }
    assert trigger["dedup_key"] == "regularization_pipeline/staging/dead_events"


def test_alertmanager_gets_a_list_of_postable_alerts_ended_on_resolve():
    (firing,), (resolved,) = [json.loads(r.body) for r in _sent("alertmanager", FIRED, CLEARED)]
    # Alertmanager's postableAlert: labels required; annotations, startsAt, endsAt, generatorURL optional.
    assert firing["labels"] == {
        "alertname": "dead_events",
        "severity": "error",
        "environment": "staging",
        "service": "regularization_pipeline",
    }
    assert firing["annotations"]["runbook_url"] == "https://docs.example.org/monitoring#dead-events"
    assert firing["generatorURL"] == "https://dagster.example.org/runs/run-1"
    assert "endsAt" not in firing and firing["startsAt"] == "2023-11-14T22:13:20Z"
    assert resolved["labels"] == firing["labels"]  # the same alert, ended
    assert resolved["endsAt"] == "2023-11-14T22:14:20Z"


def test_the_generic_json_event_is_signed_like_order_completed():
    (received,) = _sent("json", FIRED, secret="s" * 24)
    assert verify_signature("s" * 24, received.headers[SIGNATURE_HEADER.lower()], received.body)
    assert not verify_signature("t" * 24, received.headers[SIGNATURE_HEADER.lower()], received.body)
    event = json.loads(received.body)
    assert {k: event[k] for k in ("dedup_key", "action", "severity", "environment")} == {
        "dedup_key": "regularization_pipeline/staging/dead_events",
        "action": "trigger",
        "severity": "error",
        "environment": "staging",
    }
    assert event["summary"] == FIRED.text and event["details"]["detail"] == "3 event(s)"
    assert event["links"] == {
        "run": "https://dagster.example.org/runs/run-1",
        "ui": "https://dagster.example.org/runs/run-1",
        "runbook": "https://docs.example.org/monitoring#dead-events",
    }


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
