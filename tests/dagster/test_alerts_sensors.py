"""The alert sensors over real runs and check evaluations on a test instance, to a real webhook and SMTP server.

Every scenario ticks the sensor after each run and once more with nothing new:
each incident must reach each channel exactly once when it opens and once when
it clears, and the messages carry ids and counts, never customer data.
"""

from __future__ import annotations

import json
import re

import dagster as dg
import pytest
import sqlalchemy as sa

from regularization_pipeline.core import operator_tools
from regularization_pipeline.core.db import create_app_engine
from regularization_pipeline.core.tables import owned_tables
from regularization_pipeline.defs import alerts, jobs
from regularization_pipeline.defs.resources import (
    AlertResource,
    AppDatabaseResource,
    EventPublisherResource,
)
from tests.support.dagster import ALL_ASSETS, ALL_CHECKS, resources
from tests.support.databases import migrated_shop
from tests.support.http_stubs import ReceivingApp, Reply
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
        self.cursor: str | None = None
        self.alerts = AlertResource(
            webhook_url=app.url + "/services/T/B/secret",
            smtp_host="127.0.0.1",
            smtp_port=smtp.port,
            smtp_to=["oncall@example.org"],
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

    def tick(self) -> str:
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources={"alerts": self.alerts}
        )
        data = self.sensor.evaluate_tick(context)
        self.cursor = data.cursor
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
def harness(request, tmp_path):
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
    assert firing.endswith(f"run {failed.run_id} of regularize_completed_orders failed")
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


@pytest.mark.parametrize("harness", ["alert_on_stale_orphan"], indirect=True)
def test_an_orphan_older_than_the_threshold_alerts_once_and_resolves_once(harness):
    order_id = harness.shop.orphan(paid_minutes_ago=180)

    harness.run(dry_run=True)
    assert harness.tick() == "alert firing: stale_orphan"
    harness.run(dry_run=True)
    assert harness.tick() == "no change (open)"
    harness.run()  # regularizes it (its check may have looked before the flip)
    harness.run(dry_run=True)
    assert harness.shop.status_of(order_id) == "completed"
    assert harness.tick() == "alert resolved: stale_orphan"
    assert harness.tick() == "no change (none open)"

    firing, _ = harness.assert_each_channel_got("FIRING: stale_orphan", "RESOLVED: stale_orphan")
    assert "the oldest of 1 orphaned order(s) was paid 180" in firing
    assert "the payment webhook path is likely broken" in firing


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


def test_alert_thresholds_come_from_the_environment_and_a_bad_one_is_named(monkeypatch):
    from regularization_pipeline.defs import resources as definitions

    assert (
        definitions.AlertResource.from_env().stale_orphan_minutes,
        definitions.AlertResource.from_env().max_error_rate,
    ) == (60.0, 0.2)
    monkeypatch.setenv(definitions.ALERT_STALE_ORPHAN_MINUTES_ENV, "15")
    monkeypatch.setenv(definitions.ALERT_MAX_ERROR_RATE_ENV, "0.05")
    resource = definitions.AlertResource.from_env()
    assert (resource.stale_orphan_minutes, resource.max_error_rate) == (15.0, 0.05)
    monkeypatch.setenv(definitions.ALERT_MAX_ERROR_RATE_ENV, "five percent")
    with pytest.raises(
        ValueError, match="REGULARIZATION_ALERT_MAX_ERROR_RATE must be a number, got 'five percent'"
    ):
        definitions.AlertResource.from_env()
    monkeypatch.setenv(definitions.ALERT_MAX_ERROR_RATE_ENV, "5")  # a share, at most 1
    with pytest.raises(Exception, match="max_error_rate"):
        definitions.AlertResource.from_env()
