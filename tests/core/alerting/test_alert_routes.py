"""Alert routes against real local receivers: a pager (PagerDuty Events v2) taking critical alerts
and a chat channel (Slack) taking warnings, each message where its severity says, a channel added
while an incident is open told it once, links in every format, and the test alert."""

from __future__ import annotations

import json

import pytest

from regularization_pipeline.core.alerting.alert import FIRING, RESOLVED, Alert, Observation
from regularization_pipeline.core.alerting.formats import AlertLinks, plain_text, render
from regularization_pipeline.core.alerting.incidents import IncidentBook, WebhookChannel
from regularization_pipeline.core.alerting.routes import (
    NO_CHANNEL,
    deliver,
    read_routes_file,
    report_test_alert,
)
from regularization_pipeline.core.errors import ConfigurationError
from tests.support.http_stubs import ReceivingApp, Reply

LINKS = AlertLinks(
    environment="staging",
    ui_url="https://dagster.example.org/",
    runbook_url="https://docs.example.org/monitoring",
    routing_key="R0UTING",
)
WATCHDOG = Observation("no_successful_run", True, "no run for 31 min", severity="critical")
HELD = Observation("orders_held", True, "2 paid order(s) held back", size=2, severity="warning")


def _through_cursor(book: IncidentBook) -> IncidentBook:
    return IncidentBook.from_cursor(book.to_cursor())


def _bodies(app: ReceivingApp) -> list:
    return [json.loads(r.body) for r in app.snapshot()]


@pytest.fixture
def receivers():
    with ReceivingApp() as pager, ReceivingApp() as chat:
        channels = [
            WebhookChannel(
                pager.url, name="pager", fmt="pagerduty", links=LINKS, severities=("critical",)
            ),
            WebhookChannel(
                chat.url + "/services/T/B/x",
                name="chat",
                fmt="slack",
                links=LINKS,
                severities=("error", "warning"),
            ),
        ]
        yield pager, chat, channels


def test_each_alert_goes_only_to_the_channels_taking_its_severity(receivers):
    pager, chat, channels = receivers
    watchdog, held = IncidentBook(), IncidentBook()  # one book per sensor
    assert deliver(watchdog, [watchdog.observe(WATCHDOG, now=1000.0)], channels, 1000.0) == []
    assert deliver(held, [held.observe(HELD, now=1000.0)], channels, 1000.0) == []
    for book in (watchdog, held):  # the next tick: nothing new, nothing sent
        assert deliver(_through_cursor(book), [], channels, 1060.0) == []

    (page,) = _bodies(pager)
    assert (page["event_action"], page["routing_key"], page["payload"]["severity"]) == (
        "trigger",
        "R0UTING",
        "critical",
    )
    assert page["payload"]["summary"].startswith("[regularization_pipeline] FIRING: no_successful")
    assert page["links"] == [
        {"href": "https://dagster.example.org", "text": "Dagster UI"},
        {"href": "https://docs.example.org/monitoring#no-successful-run", "text": "Runbook"},
    ]
    (message,) = _bodies(chat)
    assert message == {
        "text": "[regularization_pipeline] FIRING: orders_held: 2 paid order(s) held back\n"
        "<https://dagster.example.org|Dagster UI> | "
        "<https://docs.example.org/monitoring#orders-held|Runbook>"
    }


def test_a_channel_added_while_an_incident_is_open_is_told_once_then_follows_it(receivers):
    pager, chat, channels = receivers
    book = IncidentBook()
    opened = book.observe(HELD, now=1000.0)
    assert deliver(book, [opened], [], 1000.0) == []  # no channel yet: only logged
    book = _through_cursor(book)
    assert book.observe(HELD, now=1300.0) is None  # still open, unchanged: nothing to say
    assert deliver(book, [], channels, 1300.0) == []  # the chat channel is added
    for now in (1360.0, 1420.0):
        book = _through_cursor(book)
        assert book.observe(HELD, now=now) is None
        assert deliver(book, [], channels, now) == []
    book = _through_cursor(book)
    cleared = book.observe(Observation("orders_held", False, "no paid order is held back"), 1500.0)
    assert deliver(book, [cleared], channels, 1500.0) == []

    assert [b["text"].split("\n")[0] for b in _bodies(chat)] == [
        "[regularization_pipeline] FIRING: orders_held: open for 5 min: 2 paid order(s) held back",
        "[regularization_pipeline] RESOLVED: orders_held: no paid order is held back",
    ]
    assert pager.snapshot() == []  # a warning never pages


def test_a_resolution_goes_only_where_the_incident_was_announced(receivers):
    pager, chat, channels = receivers
    book = IncidentBook()
    deliver(book, [book.observe(WATCHDOG, now=1000.0)], channels[:1], 1000.0)
    book = _through_cursor(book)
    # A channel added on the tick the incident clears never heard of it: no lone resolution.
    chat_all = WebhookChannel(chat.url, name="chat", fmt="json", links=LINKS)
    cleared = book.observe(
        Observation("no_successful_run", False, "succeeded", severity="critical")
    )
    assert deliver(book, [cleared], [channels[0], chat_all], 1100.0) == []
    assert [b["event_action"] for b in _bodies(pager)] == ["trigger", "resolve"]
    assert chat.snapshot() == []


def test_a_refused_message_is_retried_on_its_channel_only(receivers):
    pager, chat, channels = receivers
    chat_all = WebhookChannel(chat.url, name="chat", fmt="slack", links=LINKS)
    chat.script.extend([Reply(500)])
    book = IncidentBook()
    errors = deliver(book, [book.observe(WATCHDOG, now=1000.0)], [channels[0], chat_all], 1000.0)
    assert errors == ["chat: HTTP 500"]
    book = _through_cursor(book)
    assert deliver(book, [], [channels[0], chat_all], 1060.0) == []
    assert deliver(_through_cursor(book), [], [channels[0], chat_all], 1120.0) == []
    assert len(pager.snapshot()) == 1
    assert [r.status for r in chat.snapshot()] == [500, 200]


def test_an_incident_from_an_older_cursor_is_not_sent_again():
    book = IncidentBook.from_cursor(
        json.dumps(
            {
                "open": {
                    "orders_held": {"detail": "x", "size": 1, "opened_at": 1.0, "notified_at": 1.0}
                }
            }
        )
    )
    with ReceivingApp() as chat:
        assert deliver(book, [], [WebhookChannel(chat.url, name="chat")], 100.0) == []
        assert chat.snapshot() == []


@pytest.mark.parametrize("fmt", ["slack", "json", "pagerduty", "alertmanager"])
def test_every_format_carries_the_ui_and_runbook_links(fmt):
    alert = Alert("run_failed", FIRING, "run r1 failed", "error", "r1", 1000.0)
    text = json.dumps(render(alert, fmt, LINKS))
    assert "https://dagster.example.org/runs/r1" in text
    assert "https://docs.example.org/monitoring#run-failed" in text
    assert plain_text(alert, LINKS).splitlines()[1:] == [
        "Dagster run: https://dagster.example.org/runs/r1",
        "Runbook: https://docs.example.org/monitoring#run-failed",
    ]


def test_slack_text_escapes_its_control_characters():
    alert = Alert("x", RESOLVED, "a <b> & c")
    assert render(alert, "slack", AlertLinks())["text"].endswith("a &lt;b&gt; &amp; c")


def test_the_test_alert_opens_and_resolves_on_each_channel_or_on_those_taking_a_severity(
    receivers,
):
    pager, chat, channels = receivers
    lines, ok = report_test_alert(channels)
    assert ok and lines == [
        "pager: test alert sent and resolved",
        "chat: test alert sent and resolved",
    ]
    assert [b["event_action"] for b in _bodies(pager)] == ["trigger", "resolve"]
    assert "test alert to channel chat (severity error)" in _bodies(chat)[0]["text"]

    lines, ok = report_test_alert(channels, "warning")
    assert ok and lines == ["chat: test alert sent and resolved"]
    assert len(pager.snapshot()) == 2 and len(chat.snapshot()) == 4
    assert report_test_alert(channels, "info") == (
        ["no alert channel takes severity info: such alerts are only logged"],
        False,
    )
    assert report_test_alert([]) == ([NO_CHANNEL], False)
    pager.default = Reply(403)
    lines, ok = report_test_alert(channels, "critical")
    assert not ok and lines == ["pager: not delivered (pager: HTTP 403)"]


def test_the_routes_file_is_checked_and_its_problems_named(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text(
        "routes:\n"
        "  - {name: pager, format: pagerduty, url: 'https://e.example/v2', severities: [critical]}\n"
        "  - {name: chat, url_env: CHAT_URL, severities: [warning, error]}\n"
    )
    pager, chat = read_routes_file(str(path))
    assert (pager.format, pager.severities, chat.format, chat.url_env) == (
        "pagerduty",
        ("critical",),
        "slack",
        "CHAT_URL",
    )
    for text, problem in {
        "routes:\n  - {name: a, url: u, severities: [loud]}\n": "routes.0.severities.0",
        "routes:\n  - {name: a}\n": "give exactly one of url and url_env",
        "routes:\n  - {name: a, url: u, colour: red}\n": "routes.0.colour",
        "routes:\n  - {name: a, url: u}\n  - {name: a, url: v}\n": "names route a twice",
        "routes: []\n": "routes",
    }.items():
        path.write_text(text)
        with pytest.raises(ConfigurationError, match=problem):
            read_routes_file(str(path))
