"""The alert sensors over real runs and check evaluations on a test instance, to a real webhook and SMTP server.

Every scenario ticks the sensor after each run and once more with nothing new:
each incident must reach each channel exactly once when it opens and once when
it clears, and the messages carry ids and counts, never customer data.
"""

from __future__ import annotations

import json
import re
import time

import dagster as dg
import pytest
import sqlalchemy as sa

from regularization_pipeline.core.operations import operator_tools
from regularization_pipeline.core.regularizer import Regularizer
from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.core.shop.tables import owned_tables
from regularization_pipeline.defs import alerts, jobs
from regularization_pipeline.defs.resources import (
    AlertResource,
    AppDatabaseResource,
    EventPublisherResource,
)
from tests.support.dagster import ALL_ASSETS, ALL_CHECKS, resources
from tests.support.databases import migrated_shop
from tests.support.http_stubs import ReceivingApp, Reply
from tests.support.seeds import seed_events
from tests.support.smtp import SmtpServer

EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


class Harness:
    """A shop, a Dagster test instance, both alert channels, and a sensor ticked with its own cursor."""

    def __init__(
        self, tmp_path, instance, app: ReceivingApp, smtp: SmtpServer, sensor: dg.SensorDefinition
    ):
        self.url = f"sqlite:///{tmp_path / 'shop.db'}"
        self.engine = create_app_engine(self.url)
        self.shop = migrated_shop(self.engine)
        self.instance, self.app, self.smtp, self.sensor = instance, app, smtp, sensor
        self.cursors: dict[str, str | None] = {}
        self.configure()

    def configure(self, **settings) -> None:
        """Both channels, and ``settings`` of AlertResource (thresholds...)."""
        self.alerts = AlertResource(
            webhook_url=self.app.url + "/services/T/B/secret",
            smtp_host="127.0.0.1",
            smtp_port=self.smtp.port,
            smtp_to=["oncall@example.org"],
            **settings,
        )

    def run(
        self,
        publisher: EventPublisherResource | None = None,
        app_db: AppDatabaseResource | None = None,
        **config,
    ) -> dg.ExecuteInProcessResult:
        """One real run of the job (same selection and tags) on this shop."""
        res = resources(self.url, publisher)
        if app_db is not None:
            res["app_db"] = app_db
        defs = dg.Definitions(
            assets=ALL_ASSETS,
            asset_checks=ALL_CHECKS,
            jobs=[jobs.regularize_completed_orders],
            resources=res,
        )
        return defs.resolve_job_def(jobs.JOB_NAME).execute_in_process(
            instance=self.instance,
            raise_on_error=False,
            run_config={"ops": {"regularized_orders": {"config": {"sleep": 0, **config}}}},
        )

    def tick(self, sensor: dg.SensorDefinition | None = None) -> str:
        """One tick of the harness's sensor, or of ``sensor`` with its own cursor."""
        sensor = sensor or self.sensor
        resources = {"alerts": self.alerts, "app_db": AppDatabaseResource(url=self.url)}
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.cursors.get(sensor.name), resources=resources
        ) as context:
            data = sensor.evaluate_tick(context)
        self.cursors[sensor.name] = data.cursor
        return data.skip_message or ""

    def texts(self) -> list[str]:
        return [json.loads(r.body)["text"] for r in self.app.snapshot()]

    def assert_each_channel_got(self, *states_and_incident: str) -> list[str]:
        texts = self.texts()
        assert [t.split(":")[0] + ":" + t.split(":")[1] for t in texts] == [
            f"[regularization_pipeline] {s}" for s in states_and_incident
        ]
        assert self.smtp.subjects() == [
            f"[regularization_pipeline] {s}" for s in states_and_incident
        ]
        for text in texts:
            assert not EMAIL.search(text), text
        return texts


@pytest.fixture
def harness(request, tmp_path, monkeypatch):
    # A run reads only the mapping files its deployment allows: here, those in tmp_path (the
    # missing one some tests point a run at, to make it fail).
    monkeypatch.setenv("REGULARIZATION_MAPPINGS_DIR", str(tmp_path))
    sensor = {s.name: s for s in alerts.ALERT_SENSORS}[request.param]
    with dg.instance_for_test() as instance, ReceivingApp() as app, SmtpServer() as smtp:
        h = Harness(tmp_path, instance, app, smtp, sensor)
        yield h
        h.engine.dispose()


@pytest.mark.parametrize("harness", ["alert_on_failed_run"], indirect=True)
def test_a_failed_run_alerts_once_and_resolves_once_when_a_run_succeeds(harness, tmp_path):
    broken = AppDatabaseResource(url=harness.url, schema_file=str(tmp_path / "missing.yaml"))
    assert harness.tick() == "no change (none open)"  # no run yet

    failed = harness.run(app_db=broken)
    assert not failed.success
    assert harness.tick() == "alert firing: run_failed"
    assert not harness.run(app_db=broken).success  # still failing: the same incident
    assert harness.tick() == "no change (open)"
    assert harness.tick() == "no change (open)"
    succeeded = harness.run()
    assert succeeded.success
    assert harness.tick() == "alert resolved: run_failed"
    assert harness.tick() == "no change (none open)"

    firing, resolved = harness.assert_each_channel_got("FIRING: run_failed", "RESOLVED: run_failed")
    assert f"run {failed.run_id} of regularize_completed_orders failed: " in firing
    # The reason, through the one redaction: what failed stays, the quoted value (a path here,
    # a customer's data in a database's message) does not.
    assert firing.endswith("cannot read schema mapping file '…': No such file or directory"), firing
    assert resolved.endswith(f"run {succeeded.run_id} of regularize_completed_orders succeeded")


@pytest.mark.parametrize("harness", ["alert_on_error_rate"], indirect=True)
def test_an_error_rate_above_the_limit_alerts_once_and_resolves_once(harness):
    good, bad = harness.shop.orphans(2)
    with harness.engine.begin() as conn:  # the application refuses to update this one order
        conn.exec_driver_sql(
            f"CREATE TRIGGER refuse BEFORE UPDATE ON orders WHEN NEW.id = {bad} BEGIN SELECT RAISE(ABORT, 'no'); END"
        )

    harness.run()
    assert harness.tick() == "alert firing: error_rate"
    harness.run()  # the bad order fails again: rate 1.0, the same incident
    assert harness.tick() == "no change (open)"
    with harness.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER refuse")
    harness.run()
    assert harness.tick() == "alert resolved: error_rate"
    assert harness.tick() == "no change (none open)"

    firing, _ = harness.assert_each_channel_got("FIRING: error_rate", "RESOLVED: error_rate")
    assert (
        "error rate 0.5 (limit 0.2)" in firing
        and "1 failed, 0 quarantined of 2 processed" in firing
    )
    assert (harness.shop.status_of(good), harness.shop.status_of(bad)) == ("completed", "completed")


@pytest.mark.parametrize("harness", ["alert_on_inconsistent_transactions"], indirect=True)
def test_a_failing_consistency_check_alerts_once_and_resolves_once(harness):
    double = harness.shop.orphan()
    extra = harness.shop.payment(double)

    assert harness.run().success  # a non-blocking failed check: the run itself succeeds
    assert harness.tick() == "alert firing: transactions_inconsistent"
    harness.run()
    assert harness.tick() == "no change (open)"
    with harness.engine.begin() as conn:  # a human refunds the second charge
        conn.execute(
            sa.text("UPDATE transactions SET status = 'refunded' WHERE id = :id"), {"id": extra}
        )
    harness.run()
    assert harness.tick() == "alert resolved: transactions_inconsistent"
    assert harness.tick() == "no change (none open)"

    firing, _ = harness.assert_each_channel_got(
        "FIRING: transactions_inconsistent", "RESOLVED: transactions_inconsistent"
    )
    assert "1 inconsistent payment(s) need a human: 1 double_charge" in firing


@pytest.mark.parametrize("harness", ["alert_on_dead_events"], indirect=True)
def test_dead_lettered_events_alert_once_and_resolve_once_after_redelivery(harness):
    harness.shop.orphans(2)
    with ReceivingApp(default=Reply(400, b'{"error":"unknown order"}')) as receiver:
        publisher = EventPublisherResource(
            publishers=["webhook"], webhook_url=receiver.url, webhook_secret="s" * 24
        )
        harness.run(publisher=publisher)
        assert harness.tick() == "alert firing: dead_events"
        harness.run(publisher=publisher)
        assert harness.tick() == "no change (open)"

        receiver.default = Reply(200)  # the receiver is fixed; the operator redelivers
        assert (
            operator_tools.redeliver_dead_events(harness.engine, owned_tables(), all_dead=True) == 2
        )
        harness.run(publisher=publisher)
        assert len(receiver.accepted()) == 2
    assert harness.tick() == "alert resolved: dead_events"
    assert harness.tick() == "no change (none open)"

    firing, _ = harness.assert_each_channel_got("FIRING: dead_events", "RESOLVED: dead_events")
    assert "2 OrderCompleted event(s) dead-lettered" in firing


@pytest.mark.parametrize("harness", ["alert_on_dead_events"], indirect=True)
def test_dead_events_alert_from_the_outbox_itself_when_no_delivery_ran(harness):
    """Delivery stopped (its step skipped run after run): the outbox, not the latest
    materialization, says what is dead."""
    rows = seed_events(harness.shop, 2)
    ob = owned_tables().outbox
    with harness.engine.begin() as conn:
        conn.execute(ob.update().where(ob.c.id == rows[0].id).values(state="dead"))
    assert (
        harness.instance.fetch_materializations(
            dg.AssetKey("order_completed_events"), limit=1
        ).records
        == []
    )
    assert harness.tick() == "alert firing: dead_events"
    (firing,) = harness.assert_each_channel_got("FIRING: dead_events")
    assert "1 OrderCompleted event(s) dead-lettered in the outbox" in firing


@pytest.mark.parametrize("harness", ["alert_on_outbox_backlog"], indirect=True)
def test_a_backlog_alerts_from_the_outbox_itself_while_the_fix_step_fails(harness, tmp_path):
    harness.configure(max_outbox_pending=1)
    seed_events(harness.shop, 2)
    broken = AppDatabaseResource(url=harness.url, schema_file=str(tmp_path / "missing.yaml"))
    assert not harness.run(app_db=broken).success  # no delivery step ran
    assert harness.tick() == "alert firing: outbox_backlog"
    (firing,) = harness.assert_each_channel_got("FIRING: outbox_backlog")
    assert "2 OrderCompleted event(s) wait in the outbox (limit 1," in firing


@pytest.mark.parametrize("harness", ["alert_on_stale_orphan"], indirect=True)
def test_a_stale_orphan_alerts_while_runs_leave_it_and_resolves_with_the_run_that_fixes_it(harness):
    order_id = harness.shop.orphan(paid_minutes_ago=180)

    harness.run(dry_run=True)
    assert harness.tick() == "alert firing: stale_orphan"
    harness.run(dry_run=True)
    assert harness.tick() == "no change (open)"
    harness.run()  # fixes it: its audit, written after the fix, is newer than its check
    assert harness.shop.status_of(order_id) == "completed"
    assert harness.tick() == "alert resolved: stale_orphan"
    assert harness.tick() == "no change (none open)"

    firing, _ = harness.assert_each_channel_got("FIRING: stale_orphan", "RESOLVED: stale_orphan")
    assert "the oldest of 1 fixable orphaned order(s) was paid 180 min ago (limit 60)" in firing


@pytest.mark.parametrize("harness", ["alert_on_failed_run"], indirect=True)
def test_without_channels_alerts_are_only_logged_and_still_tracked(harness, tmp_path):
    harness.alerts = AlertResource()
    harness.run(
        app_db=AppDatabaseResource(url=harness.url, schema_file=str(tmp_path / "missing.yaml"))
    )
    assert harness.tick() == "alert firing: run_failed (logged only: no channel configured)"
    assert harness.tick() == "no change (open)"
    assert harness.app.snapshot() == [] and harness.smtp.messages() == []


@pytest.mark.parametrize("harness", ["alert_on_stale_orphan"], indirect=True)
def test_the_audit_counts_remaining_orphans_with_the_runs_own_grace_period_and_times_the_run(
    harness,
):
    harness.shop.orphan(
        paid_minutes_ago=60
    )  # an orphan for the default grace (10), not for a 120-minute one

    patient = harness.run(min_age_minutes=120)
    default = harness.run(dry_run=True)

    def audit(result):
        (event,) = [
            e
            for e in result.get_asset_materialization_events()
            if e.asset_key == dg.AssetKey("regularization_audit")
        ]
        return {k: v.value for k, v in event.materialization.metadata.items()}

    assert (audit(patient)["orphans_remaining"], float(audit(patient)["grace_minutes"])) == (
        0,
        120.0,
    )
    assert (audit(default)["orphans_remaining"], float(audit(default)["grace_minutes"])) == (
        1,
        10.0,
    )
    assert 0 < audit(patient)["run_duration_seconds"] < 120


def test_alert_settings_come_from_the_environment_and_a_bad_one_is_reported_never_fatal(
    monkeypatch,
):
    from regularization_pipeline.defs.resources import alerting as definitions

    defaults = definitions.AlertResource.from_env()
    assert (defaults.stale_orphan_minutes, defaults.max_error_rate, defaults.warnings()) == (
        60.0,
        0.2,
        [],
    )
    monkeypatch.setenv(definitions.ALERT_STALE_ORPHAN_MINUTES_ENV, "15")
    monkeypatch.setenv(definitions.ALERT_MAX_ERROR_RATE_ENV, "0.05")
    monkeypatch.setenv("REGULARIZATION_ALERT_SMTP_STARTTLS", "off")
    resource = definitions.AlertResource.from_env()
    assert (resource.stale_orphan_minutes, resource.max_error_rate) == (15.0, 0.05)
    assert resource.smtp_starttls is False

    for name, value in {
        definitions.ALERT_MAX_ERROR_RATE_ENV: "five percent",
        definitions.ALERT_STALE_ORPHAN_MINUTES_ENV: "-1",
        "REGULARIZATION_ALERT_SMTP_PORT": "abc",
        "REGULARIZATION_ALERT_SMTP_STARTTLS": "ture",
        "REGULARIZATION_ALERT_WEBHOOK_FORMAT": "teams",
        "REGULARIZATION_ALERT_SMTP_HOST": "smtp.example.org",
    }.items():
        monkeypatch.setenv(name, value)
    resource = definitions.AlertResource.from_env()  # loads: the code location stays up
    assert resource.warnings() == [
        "REGULARIZATION_ALERT_MAX_ERROR_RATE must be a number, got 'five percent'",
        "REGULARIZATION_ALERT_SMTP_PORT must be a whole number, got 'abc'",
        "REGULARIZATION_ALERT_SMTP_STARTTLS must be true or false, got 'ture'",
        "REGULARIZATION_ALERT_WEBHOOK_FORMAT='teams' refused (String should match pattern "
        "'^(slack|json|pagerduty|alertmanager)$')",
        "REGULARIZATION_ALERT_STALE_ORPHAN_MINUTES=-1.0 refused (Input should be greater than 0)",
        "REGULARIZATION_ALERT_SMTP_HOST is set but REGULARIZATION_ALERT_SMTP_TO is empty: "
        "e-mail alerts are off",
    ]
    assert (resource.max_error_rate, resource.stale_orphan_minutes, resource.smtp_port) == (
        0.2,
        60.0,
        25,
    )
    assert resource.smtp_starttls is None and resource.webhook_format == "slack"
    assert resource.channels() == []


@pytest.mark.parametrize("harness", ["alert_on_failed_run"], indirect=True)
def test_every_sensor_tick_reports_a_bad_alert_setting_and_still_alerts(harness, monkeypatch):
    monkeypatch.setenv("REGULARIZATION_ALERT_SMTP_PORT", "abc")
    harness.alerts = AlertResource.from_env()
    assert harness.tick() == (
        "no change (none open) [alert settings: "
        "REGULARIZATION_ALERT_SMTP_PORT must be a whole number, got 'abc']"
    )
    monkeypatch.setenv("REGULARIZATION_ALERT_WEBHOOK_URL", harness.app.url)
    harness.alerts = AlertResource.from_env()
    harness.run(app_db=AppDatabaseResource(url=harness.url, schema_file="/nonexistent.yaml"))
    assert harness.tick().startswith("alert firing: run_failed [alert settings: ")
    assert len(harness.app.wait_for(1)) == 1


def test_delivery_retries_come_from_the_environment_and_a_bad_one_fails_the_run_naming_it(
    monkeypatch,
):
    from regularization_pipeline.core.errors import ConfigurationError

    monkeypatch.setenv("REGULARIZATION_DELIVERY_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("REGULARIZATION_DELIVERY_BASE_DELAY_SECONDS", "5")
    monkeypatch.setenv("REGULARIZATION_DELIVERY_MAX_DELAY_SECONDS", "60")
    publisher = EventPublisherResource.from_env()
    assert (publisher.max_attempts, publisher.base_delay_seconds, publisher.max_delay_seconds) == (
        3,
        5.0,
        60.0,
    )
    monkeypatch.setenv("REGULARIZATION_DELIVERY_MAX_ATTEMPTS", "three")
    publisher = EventPublisherResource.from_env()  # the code location still loads
    with pytest.raises(
        ConfigurationError,
        match=r"^REGULARIZATION_DELIVERY_MAX_ATTEMPTS must be a whole number, got 'three'$",
    ):
        publisher.settings()


@pytest.mark.parametrize("harness", ["alert_on_error_rate"], indirect=True)
def test_quarantining_failing_orders_keeps_them_alerted_until_released(harness):
    held = {s.name: s for s in alerts.ALERT_SENSORS}["alert_on_held_orders"]
    blocked = harness.shop.orphans(3)
    with harness.engine.begin() as conn:  # the application refuses to update these orders
        conn.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE UPDATE ON orders BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
    harness.run(max_attempts=2)
    assert harness.tick() == "alert firing: error_rate"
    assert harness.tick(held) == "no change (none open)"
    harness.run(max_attempts=2)  # the second failure quarantines all three
    assert harness.tick(held) == "alert firing: orders_held"
    harness.run(max_attempts=2)  # processes nothing: that proves nothing
    assert harness.tick() == "no change (open)"
    assert harness.tick(held) == "no change (open)"

    with harness.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER refuse")
    regularizer = Regularizer(harness.engine, AppDatabaseResource(url=harness.url).bind())
    for order_id in blocked:  # what `regularize-completed-orders release` does
        regularizer.release(order_id)
    assert harness.tick(held) == "alert resolved: orders_held"
    harness.run(max_attempts=2)
    assert harness.tick() == "alert resolved: error_rate"
    assert [harness.shop.status_of(o) for o in blocked] == ["completed"] * 3

    texts = harness.texts()
    assert [t.split(": ")[0:2] for t in texts] == [
        ["[regularization_pipeline] FIRING", "error_rate"],
        ["[regularization_pipeline] FIRING", "orders_held"],
        ["[regularization_pipeline] RESOLVED", "orders_held"],
        ["[regularization_pipeline] RESOLVED", "error_rate"],
    ]
    ids = ", ".join(str(o) for o in sorted(blocked))
    assert f"3 paid order(s) held back from regularization: 3 quarantined (order {ids})" in texts[1]


@pytest.mark.parametrize("harness", ["alert_on_inconsistent_transactions"], indirect=True)
def test_a_planned_check_never_hides_an_incident_and_growth_notifies_again(harness, tmp_path):
    broken = AppDatabaseResource(url=harness.url, schema_file=str(tmp_path / "missing.yaml"))
    # Paid 15 minutes ago: the consistency check re-examines recent payments at each evaluation.
    first = harness.shop.orphan(paid_minutes_ago=15)
    harness.shop.payment(first, completed_minutes_ago=15)
    harness.run()
    assert harness.tick() == "alert firing: transactions_inconsistent"
    assert not harness.run(app_db=broken).success  # leaves its check evaluation PLANNED
    assert harness.tick() == "no change (open)"
    second = harness.shop.orphan(paid_minutes_ago=15)
    harness.shop.payment(second, completed_minutes_ago=15)
    harness.run()
    assert harness.tick() == "alert firing: transactions_inconsistent"  # 1 -> 2: grew x2
    with harness.engine.begin() as conn:  # a human refunds both second charges
        conn.execute(
            sa.text(
                "UPDATE transactions SET status = 'refunded' WHERE id IN "
                "(SELECT MAX(id) FROM transactions GROUP BY order_id HAVING COUNT(*) > 1)"
            )
        )
    harness.run()
    assert not harness.run(app_db=broken).success  # the newest record is PLANNED again
    assert harness.tick() == "alert resolved: transactions_inconsistent"

    opened, grew, resolved = harness.texts()
    assert "1 inconsistent payment(s) need a human: 1 double_charge" in opened
    assert "grew from 1 to 2: 2 inconsistent payment(s) need a human: 2 double_charge" in grew
    assert "no inconsistent payment left" in resolved


@pytest.mark.parametrize("harness", ["alert_on_outbox_backlog"], indirect=True)
def test_an_outbox_backlog_alerts_while_the_receiver_refuses_and_resolves_when_it_takes_them(
    harness,
):
    harness.configure(max_outbox_pending=1)
    harness.shop.orphans(2)
    with ReceivingApp(default=Reply(503)) as receiver:
        publisher = EventPublisherResource(
            publishers=["webhook"],
            webhook_url=receiver.url,
            webhook_secret="s" * 24,
            base_delay_seconds=0,
        )
        harness.run(publisher=publisher)
        assert harness.tick() == "alert firing: outbox_backlog"
        receiver.default = Reply(200)
        harness.run(publisher=publisher)
        assert len(receiver.accepted()) == 2
    assert harness.tick() == "alert resolved: outbox_backlog"
    firing, _ = harness.assert_each_channel_got(
        "FIRING: outbox_backlog", "RESOLVED: outbox_backlog"
    )
    assert "2 OrderCompleted event(s) wait in the outbox (limit 1," in firing


@pytest.mark.parametrize("harness", ["alert_on_webhook_path"], indirect=True)
def test_many_fresh_orphans_fixed_within_the_hour_mean_the_webhook_path_is_broken(harness):
    harness.configure(max_regularized_per_hour=2)
    harness.shop.orphans(
        2, paid_minutes_ago=12
    )  # fixed young: the stale-orphan alert never sees them
    harness.run()
    assert harness.tick() == "no change (none open)"
    harness.shop.orphans(1, paid_minutes_ago=12)
    harness.run()
    assert harness.tick() == "alert firing: webhook_path"
    (firing,) = harness.texts()
    assert "3 orphaned order(s) regularized in the last hour (limit 2)" in firing


@pytest.mark.parametrize("harness", ["alert_on_no_successful_run"], indirect=True)
def test_the_watchdog_fires_when_no_run_succeeds_in_time_and_pings_the_heartbeat_per_success(
    harness,
):
    with ReceivingApp() as heartbeat:
        harness.configure(no_success_minutes=0.05, heartbeat_url=heartbeat.url + "/ping/abc")
        assert harness.tick() == "no change (none open)"  # the watchdog starts its clock
        time.sleep(3.5)  # the schedule is stopped: nothing runs
        assert harness.tick() == "alert firing: no_successful_run"
        succeeded = harness.run()
        assert harness.tick() == "alert resolved: no_successful_run"
        assert harness.tick() == "no change (none open)"
        assert [r.path for r in heartbeat.snapshot()] == ["/ping/abc"]  # once per successful run
    firing, resolved = harness.assert_each_channel_got(
        "FIRING: no_successful_run", "RESOLVED: no_successful_run"
    )
    assert "no run of regularize_completed_orders has succeeded for over 0.05 min" in firing
    assert "0 queued" in firing
    assert succeeded.success and "succeeded 0 min ago" in resolved
