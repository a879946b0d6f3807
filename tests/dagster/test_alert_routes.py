"""Alert routes as the code location builds them (variables and a routes file), the sensors sending
to two real receivers by severity, a channel added while an incident is open, and the test alert
from the CLI and from the UI's job."""

from __future__ import annotations

import json
import os
import time

import dagster as dg
import pytest

from regularization_pipeline import cli
from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.defs import alerts
from regularization_pipeline.defs.resources import AlertResource, AppDatabaseResource
from tests.support.databases import migrated_shop
from tests.support.http_stubs import ReceivingApp
from tests.support.rows import owned
from tests.support.rows import quarantine as _quarantine
from tests.support.smtp import SmtpServer

SENSORS = {s.name: s for s in alerts.ALERT_SENSORS}


@pytest.fixture
def routed(tmp_path, monkeypatch):
    """A pager (PagerDuty, critical) and a chat channel (Slack, warnings) in a routes file; the
    chat's address through its variable, as a token-bearing URL should be."""
    with ReceivingApp() as pager, ReceivingApp() as chat:
        path = tmp_path / "routes.yaml"
        path.write_text(
            "routes:\n"
            f"  - {{name: pager, format: pagerduty, url: '{pager.url}/v2/enqueue',\n"
            "     routing_key_env: TEST_PAGER_KEY, severities: [critical]}\n"
            "  - {name: chat, format: slack, url_env: TEST_CHAT_URL, severities: [error, warning]}\n"
        )
        for name in list(os.environ):
            if name.startswith("REGULARIZATION_ALERT_"):
                monkeypatch.delenv(name)
        monkeypatch.setenv("TEST_PAGER_KEY", "R0UTING")
        monkeypatch.setenv("TEST_CHAT_URL", chat.url + "/services/T/B/secret")
        monkeypatch.setenv("REGULARIZATION_ALERT_ROUTES_FILE", str(path))
        monkeypatch.setenv("REGULARIZATION_ALERT_UI_URL", "http://127.0.0.1:3000")
        yield pager, chat, path


def quarantine(shop, order_id) -> None:
    """Quarantined after five failures, with the failure's reason as a run records it."""
    _quarantine(shop, order_id)
    with shop.engine.begin() as conn:
        conn.execute(owned(shop).attempts.update().values(last_reason="database: OperationalError"))


def _bodies(app: ReceivingApp) -> list:
    return [json.loads(r.body) for r in app.snapshot()]


class Ticks:
    def __init__(self, instance, url: str):
        self.instance, self.url, self.cursors = instance, url, {}

    def tick(self, name: str) -> str:
        sensor = SENSORS[name]
        res = {
            "alerts": AlertResource.from_env(),
            "app_db": AppDatabaseResource(url=self.url),
        }
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.cursors.get(name), resources=res
        ) as context:
            data = sensor.evaluate_tick(context)
        self.cursors[name] = data.cursor
        self.last = data
        return data.skip_message or ""


@pytest.fixture
def ticks(tmp_path):
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    engine = create_app_engine(url)
    shop = migrated_shop(engine)
    with dg.instance_for_test() as instance:
        yield Ticks(instance, url), shop
    engine.dispose()


def test_the_sensors_route_each_alert_by_severity_to_two_receivers(routed, ticks, monkeypatch):
    pager, chat, path = routed
    t, shop = ticks
    monkeypatch.setenv("REGULARIZATION_ALERT_NO_SUCCESS_MINUTES", "0.0001")
    assert t.tick("alert_on_no_successful_run") == "no change (none open)"  # starts its clock
    quarantine(shop, shop.orphan())
    assert t.tick("alert_on_held_orders") == "alert firing: orders_held"
    assert t.tick("alert_on_no_successful_run") == "alert firing: no_successful_run"
    assert t.tick("alert_on_held_orders") == "no change (open)"

    (page,) = _bodies(pager)
    assert (page["routing_key"], page["payload"]["severity"], page["dedup_key"]) == (
        "R0UTING",
        "critical",
        "regularization_pipeline/production/no_successful_run",
    )
    (message,) = _bodies(chat)
    assert message["text"].startswith("[regularization_pipeline] FIRING: orders_held: 1 paid order")
    assert message["text"].endswith("\n<http://127.0.0.1:3000|Dagster UI>")
    assert [r.path for r in chat.snapshot()] == ["/services/T/B/secret"]


def test_an_incident_open_before_a_channel_is_configured_reaches_it_once(
    routed, ticks, monkeypatch
):
    pager, chat, path = routed
    t, shop = ticks
    monkeypatch.delenv("REGULARIZATION_ALERT_ROUTES_FILE")  # no channel yet
    quarantine(shop, shop.orphan())
    assert t.tick("alert_on_held_orders") == (
        "alert firing: orders_held (logged only: no channel configured)"
    )
    monkeypatch.setenv("REGULARIZATION_ALERT_ROUTES_FILE", str(path))  # the chat is added
    for _ in range(3):
        assert t.tick("alert_on_held_orders") == "no change (open)"
    (message,) = _bodies(chat)
    assert message["text"].startswith(
        "[regularization_pipeline] FIRING: orders_held: open for 0 min"
    )
    assert pager.snapshot() == []


def test_a_route_that_cannot_be_built_is_named_on_every_tick_and_the_others_still_send(
    routed, ticks, monkeypatch
):
    pager, chat, path = routed
    t, shop = ticks
    monkeypatch.delenv("TEST_PAGER_KEY")
    monkeypatch.setenv("REGULARIZATION_ALERT_SMTP_SEVERITIES", "warning,loud")
    resource = AlertResource.from_env()
    assert resource.warnings() == [
        "REGULARIZATION_ALERT_SMTP_SEVERITIES=['warning', 'loud'] refused (Value error, severities "
        "are critical, error, warning, info; got warning, loud)",
        "alert route 'pager': TEST_PAGER_KEY is not set: the route is off",
    ]
    assert [c.name for c in resource.channels()] == ["chat"]
    quarantine(shop, shop.orphan())
    assert t.tick("alert_on_held_orders").startswith(
        "alert firing: orders_held [alert settings: REGULARIZATION_ALERT_SMTP_SEVERITIES="
    )
    assert len(chat.snapshot()) == 1


def test_the_single_webhook_variables_still_make_one_route_with_its_severities(monkeypatch):
    with ReceivingApp() as app:
        for name in ("REGULARIZATION_ALERT_ROUTES_FILE", "REGULARIZATION_ALERT_SMTP_HOST"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("REGULARIZATION_ALERT_WEBHOOK_URL", app.url)
        monkeypatch.setenv("REGULARIZATION_ALERT_WEBHOOK_SEVERITIES", "Critical")
        resource = AlertResource.from_env().process_config_and_initialize()
        (channel,) = resource.channels()
        assert (channel.name, channel.url, channel.severities) == (
            "webhook",
            app.url,
            ("critical",),
        )


def test_send_test_alert_from_the_cli_and_the_ui_job_reaches_both_receivers(
    routed, monkeypatch, capsys
):
    pager, chat, path = routed
    assert cli.main(["send-test-alert"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "pager: test alert sent and resolved",
        "chat: test alert sent and resolved",
    ]
    assert [b["event_action"] for b in _bodies(pager)] == ["trigger", "resolve"]
    assert [b["text"].split(": ")[1] for b in _bodies(chat)] == ["test_alert", "test_alert"]

    assert cli.main(["send-test-alert", "--severity", "critical"]) == 0
    assert len(pager.snapshot()) == 4 and len(chat.snapshot()) == 2

    result = alerts.send_test_alert.execute_in_process(
        resources={"alerts": AlertResource.from_env()},
        run_config={"ops": {"send_test_alert_to_channels": {"config": {"severity": "warning"}}}},
    )
    assert result.success
    assert len(pager.snapshot()) == 4 and len(chat.snapshot()) == 4

    monkeypatch.delenv("REGULARIZATION_ALERT_ROUTES_FILE")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["send-test-alert"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "error: no alert channel is configured: set REGULARIZATION_ALERT_WEBHOOK_URL, "
        "REGULARIZATION_ALERT_ROUTES_FILE or REGULARIZATION_ALERT_SMTP_HOST\n"
    )
    failed = alerts.send_test_alert.execute_in_process(
        resources={"alerts": AlertResource.from_env()}, raise_on_error=False
    )
    assert not failed.success


def test_the_held_orders_alert_advises_a_release_only_when_an_order_is_quarantined(routed, ticks):
    _pager, chat, _path = routed
    t, shop = ticks
    mismatch = shop.orphan(amount="90.00")
    with shop.engine.begin() as conn:  # as the tracker records an open amount mismatch
        conn.execute(
            owned(shop)
            .inconsistencies.insert()
            .values(order_id=str(mismatch), kind="amount_mismatch", first_seen_at=utcnow())
        )
    assert t.tick("alert_on_held_orders") == "alert firing: orders_held"
    quarantine(shop, shop.orphan())
    assert t.tick("alert_on_held_orders") == "alert firing: orders_held"  # 1 -> 2: grew
    only_inconsistent, both = (b["text"].split("\n")[0] for b in _bodies(chat))
    assert only_inconsistent.endswith(
        f"1 amount_mismatch (order {mismatch}); inconsistent: settle the payment "
        "(`regularize-completed-orders list-inconsistencies`)"
    )
    assert "release --order-id" not in only_inconsistent
    assert "quarantined: fix the cause, then `regularize-completed-orders release" in both


def test_a_tick_that_raised_an_alert_records_an_observation_an_idle_one_does_not(routed, ticks):
    _pager, chat, _path = routed
    t, shop = ticks
    assert t.tick("alert_on_held_orders") == "no change (none open)"
    assert list(t.last.asset_events) == []
    quarantine(shop, shop.orphan())
    assert t.tick("alert_on_held_orders") == "alert firing: orders_held"
    (observation,) = t.last.asset_events
    assert observation.asset_key == dg.AssetKey("app_orders")
    assert {k: v.value for k, v in observation.metadata.items()} == {
        "alert_sensor": "alert_on_held_orders",
        "alert_incident": "orders_held",
        "alert_state": "firing",
        "alert_severity": "warning",
        "alert_channels": "chat",
        "alert_undelivered": 0,
    }
    assert observation.description.startswith("[regularization_pipeline] FIRING: orders_held")
    assert t.tick("alert_on_held_orders") == "no change (open)"
    assert list(t.last.asset_events) == []
    assert len(chat.snapshot()) == 1


def test_without_a_shops_file_incidents_keep_their_keys_and_an_open_one_resolves_under_it(
    ticks, monkeypatch
):
    t, shop = ticks
    now = time.time()
    # An incident opened before shops existed, its cursor as that version wrote it.
    t.cursors["alert_on_held_orders"] = json.dumps(
        {
            "open": {
                "orders_held": {
                    "detail": "1 paid order(s) held back from regularization",
                    "size": 1,
                    "opened_at": now - 600,
                    "notified_at": now - 600,
                    "severity": "warning",
                    "run_id": None,
                    "told": ["webhook"],
                }
            },
            "undelivered": [],
            "since": now - 600,
            "notes": {},
        }
    )
    with ReceivingApp() as receiver:
        for name in list(os.environ):
            if name.startswith("REGULARIZATION_ALERT_"):
                monkeypatch.delenv(name)
        monkeypatch.setenv("REGULARIZATION_ALERT_WEBHOOK_URL", receiver.url + "/alerts")
        monkeypatch.setenv("REGULARIZATION_ALERT_WEBHOOK_FORMAT", "json")
        assert t.tick("alert_on_held_orders") == "alert resolved: orders_held"  # none held now
        quarantine(shop, shop.orphan())
        assert t.tick("alert_on_held_orders") == "alert firing: orders_held"
        events = _bodies(receiver)

    assert [(e["dedup_key"], e["action"]) for e in events] == [
        ("regularization_pipeline/production/orders_held", "resolve"),
        ("regularization_pipeline/production/orders_held", "trigger"),
    ]
    assert all("shop" not in e["details"] for e in events)
    assert events[1]["summary"].startswith("[regularization_pipeline] FIRING: orders_held: 1 paid")
    assert list(json.loads(t.cursors["alert_on_held_orders"])["open"]) == ["orders_held"]


def test_email_routes_of_the_routes_file_reach_their_recipients_by_severity(
    tmp_path, ticks, monkeypatch
):
    """Finance reads the held-order warnings by e-mail, on-call the critical ones: two e-mail
    routes of the file through the one SMTP server of the variables, a real one here."""
    path = tmp_path / "routes.yaml"
    path.write_text(
        "routes:\n"
        "  - {name: finance, format: email, to: [payments@shop.test], severities: [warning]}\n"
        "  - {name: oncall, format: email, to: [oncall@shop.test], severities: [critical]}\n"
    )
    for name in list(os.environ):
        if name.startswith("REGULARIZATION_ALERT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REGULARIZATION_ALERT_ROUTES_FILE", str(path))
    t, shop = ticks
    assert AlertResource.from_env().warnings() == [
        "alert route 'finance': REGULARIZATION_ALERT_SMTP_HOST is not set: the route is off",
        "alert route 'oncall': REGULARIZATION_ALERT_SMTP_HOST is not set: the route is off",
    ]
    with SmtpServer() as smtp:
        monkeypatch.setenv("REGULARIZATION_ALERT_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("REGULARIZATION_ALERT_SMTP_PORT", str(smtp.port))
        monkeypatch.setenv("REGULARIZATION_ALERT_NO_SUCCESS_MINUTES", "0.0001")
        assert [c.name for c in AlertResource.from_env().channels()] == ["finance", "oncall"]
        assert t.tick("alert_on_no_successful_run") == "no change (none open)"
        quarantine(shop, shop.orphan())
        assert t.tick("alert_on_held_orders") == "alert firing: orders_held"
        assert t.tick("alert_on_no_successful_run") == "alert firing: no_successful_run"
        sent = [(to, message["Subject"]) for to, message, _auth in smtp.messages()]
    assert len(sent) == 2
    assert sent[0][0] == ["payments@shop.test"] and "orders_held" in sent[0][1]
    assert sent[1][0] == ["oncall@shop.test"] and "no_successful_run" in sent[1][1]


@pytest.mark.parametrize(
    "route, problem",
    [
        ("{name: m, format: email}", "an email route needs `to`"),
        ("{name: m, format: email, to: [a@b.c], url: 'http://x'}", "an email route takes `to`"),
        ("{name: m, format: slack, url: 'http://x', to: [a@b.c]}", "`to` is for email routes"),
    ],
)
def test_an_email_route_written_wrong_is_named_and_off(tmp_path, monkeypatch, route, problem):
    path = tmp_path / "routes.yaml"
    path.write_text(f"routes:\n  - {route}\n")
    monkeypatch.setenv("REGULARIZATION_ALERT_ROUTES_FILE", str(path))
    (warning,) = [w for w in AlertResource.from_env().warnings() if "routes file" in w]
    assert problem in warning and warning.endswith("its routes are off")
