"""The job's assets and checks, run with dg.materialize on a real instance and real databases."""

from __future__ import annotations

import re

import dagster as dg
import pytest
import sqlalchemy as sa

from regularization_pipeline.core import verdicts
from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.definitions import defs
from regularization_pipeline.defs.resources import EventPublisherResource
from regularization_pipeline.demo.handlers import effect_counts
from tests.support.dagster import (
    check_evaluation,
    demo_publisher,
    materialization_metadata,
    materialize_all,
)
from tests.support.http_stubs import ReceivingApp
from tests.support.rows import audit_actions, outbox_states


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def handlers_db(db_url, monkeypatch):
    """The demo handlers write to the database under test, found through the environment."""
    monkeypatch.setenv("REGULARIZATION_DATABASE_URL", db_url)
    return db_url


def seed_mixed_shop(shop):
    """Orphans, a healthy order, one within the grace period, inconsistencies and a soft-deleted orphan."""
    orphans = [shop.orphan(paid_minutes_ago=90 + i) for i in range(4)]
    healthy = shop.order(status="completed")
    shop.payment(healthy)
    recent = shop.orphan(paid_minutes_ago=2)
    mismatch = shop.order(total="10.00")
    shop.payment(mismatch, amount="12.00")
    double = shop.order()
    shop.payment(double)
    shop.payment(double)
    deleted = shop.orphan(deleted=True)
    return {
        "orphans": orphans,
        "healthy": healthy,
        "recent": recent,
        "mismatch": mismatch,
        "double": double,
        "deleted": deleted,
    }


def test_whole_selection_regularizes_delivers_and_audits(shop, handlers_db, instance):
    seeded = seed_mixed_shop(shop)

    result = materialize_all(handlers_db, instance, limit=50)

    assert result.success
    assert [shop.status_of(i) for i in seeded["orphans"]] == ["completed"] * 4
    for untouched in ("recent", "mismatch", "double", "deleted"):
        assert shop.status_of(seeded[untouched]) == "pending", untouched

    regularized = materialization_metadata(result, "regularized_orders")
    assert regularized["regularized"] == 4
    # Orphans are what the job fixes: the 4. The mismatch and the double charge are held.
    assert regularized["orphans_found"] == 4
    assert regularized["held_orders"] == 2
    assert regularized["held_orders_amount_mismatch"] == 1
    assert regularized["held_orders_double_charge"] == 1
    assert regularized["inconsistent_amount_mismatch"] == 1
    assert regularized["inconsistent_double_charge"] == 1
    assert regularized["failed"] == 0
    # The headline comes first and names only what is not zero.
    assert list(regularized)[0] == "summary"
    assert regularized["summary"].startswith("4 regularized of 4 orphan(s) found, the oldest paid")
    assert regularized["summary"].endswith("held: 1 amount_mismatch, 1 double_charge")
    assert "failed" not in regularized["summary"]

    events = materialization_metadata(result, "order_completed_events")
    assert events["delivered"] == 4 and events["dead"] == 0 and events["retried"] == 0
    assert events["outbox_pending"] == 0 and events["outbox_dead"] == 0
    assert outbox_states(shop.engine) == {tb.DELIVERED: 4}
    assert effect_counts(shop.engine) == {
        "demo_enrollments": 4,
        "demo_notifications": 4,
        "demo_subscriptions": 4,
    }

    audit = materialization_metadata(result, "regularization_audit")
    in_db = audit_actions(shop.engine, result.run_id)
    assert in_db == {verdicts.REGULARIZED: 4, verdicts.INCONSISTENT: 2}
    by_action = audit["audit_rows_by_action"]
    assert by_action["total"] == sum(in_db.values())
    assert by_action[verdicts.REGULARIZED] == audit["regularized"] == in_db[verdicts.REGULARIZED]
    assert by_action[verdicts.INCONSISTENT] == in_db[verdicts.INCONSISTENT]
    assert by_action[verdicts.FAILED] == 0 and audit["error_rate"] == 0.0
    assert audit["orphans_remaining"] == 0  # the inconsistent ones are held, not orphans
    assert audit["held"] == 2  # ... counted apart
    # The operator's figures lead; the UI plots only numbers, so only they are numbers.
    assert list(audit)[:5] == [
        "orphans_remaining",
        "regularized",
        "error_rate",
        "held",
        "run_duration_seconds",
    ]
    numeric = {k for k, v in audit.items() if isinstance(v, int | float)}
    assert numeric == {*list(audit)[:5], "oldest_orphan_age_minutes"}
    preview_rows = [
        line for line in audit["preview"].splitlines() if re.search(r"\|\s*regularized\s*\|", line)
    ]
    assert sorted(int(line.split("|")[1]) for line in preview_rows) == sorted(seeded["orphans"])


def test_the_checks_and_the_orders_counts_tell_the_state_after_the_run(shop, handlers_db, instance):
    orphans = shop.orphans(3)
    shop.payment(shop.order(status="completed"))

    result = materialize_all(handlers_db, instance, limit=50)

    assert [shop.status_of(i) for i in orphans] == ["completed"] * 3
    steps = [e.step_key for e in result.all_events if e.is_step_success]
    for check in ("no_orphaned_pending_orders", "transactions_consistent"):
        # Run after the last asset: the result is the state the run left.
        assert steps.index(next(s for s in steps if check in s)) > steps.index(
            "regularization_audit"
        ), steps
    orphan_check = check_evaluation(result, "no_orphaned_pending_orders")
    assert orphan_check.passed and orphan_check.metadata["orphaned_orders"].value == 0
    observations = [
        e.event_specific_data.asset_observation
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    # Observed when the run starts and again at its end: the last observation is the truth.
    assert [o.metadata["orders_completed"].value for o in observations] == [1, 4]
    assert "orders_pending" not in observations[-1].metadata
    (latest,) = instance.fetch_observations(dg.AssetKey("app_orders"), limit=1).records
    assert latest.asset_observation.metadata["orders_completed"].value == 4


def test_the_audit_preview_shows_blanks_for_values_a_row_does_not_have(shop, handlers_db, instance):
    shop.orphan()
    double = shop.order()  # a double charge: its audit row names no single payment
    shop.payment(double)
    shop.payment(double)

    result = materialize_all(handlers_db, instance, limit=50)

    preview = materialization_metadata(result, "regularization_audit")["preview"]
    assert re.search(r"\|\s*regularized\s*\|", preview)
    assert re.search(rf"\|\s*{double}\s*\|\s*inconsistent\s*\|", preview), preview
    assert not re.search(r"\b(nan|NaT|None)\b", preview), preview


def test_lineage_runs_from_the_observed_table_to_the_audit():
    graph = defs.resolve_asset_graph()
    parents = {
        key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    assert parents == {
        "app_orders": set(),
        "regularized_orders": {"app_orders"},
        "order_completed_events": {"regularized_orders"},
        "regularization_audit": {"order_completed_events"},
    }
    job = defs.resolve_job_def("regularize_completed_orders")
    assert {k.name for k in job.asset_layer.asset_graph.asset_check_keys} == {
        "no_orphaned_pending_orders",
        "transactions_consistent",
    }


def test_checks_warn_on_orphans_and_error_on_inconsistencies(shop, handlers_db, instance):
    seeded = seed_mixed_shop(shop)

    result = materialize_all(handlers_db, instance, dry_run=True)

    orphans = check_evaluation(result, "no_orphaned_pending_orders")
    assert not orphans.passed
    assert orphans.severity == dg.AssetCheckSeverity.WARN
    assert orphans.metadata["orphaned_orders"].value == 4  # held orders are counted apart
    assert orphans.metadata["oldest_orphan_age_minutes"].value >= 90
    sample = orphans.metadata["sample_order_ids"].value
    assert set(map(str, seeded["orphans"])) <= set(sample) and str(seeded["recent"]) not in sample

    consistent = check_evaluation(result, "transactions_consistent")
    assert not consistent.passed
    assert consistent.severity == dg.AssetCheckSeverity.ERROR
    assert consistent.metadata["inconsistent_amount_mismatch"].value == 1
    assert consistent.metadata["inconsistent_double_charge"].value == 1
    assert consistent.metadata["inconsistencies_total"].value == 2
    assert consistent.metadata["held_orders"].value == 2
    assert consistent.metadata["held_orders_amount_mismatch"].value == 1
    assert consistent.metadata["held_orders_quarantined"].value == 0
    # Neither check blocks the run: a dry run changes nothing and succeeds.
    assert result.success
    assert [shop.status_of(i) for i in seeded["orphans"]] == ["pending"] * 4
    assert audit_actions(shop.engine, result.run_id) == {verdicts.DRY_RUN: 4}


def test_checks_pass_on_a_healthy_shop(shop, handlers_db, instance):
    healthy = shop.order(status="completed")
    shop.payment(healthy)
    shop.orphan(paid_minutes_ago=1)  # within the grace period: its webhook may still come

    result = materialize_all(handlers_db, instance)

    assert check_evaluation(result, "no_orphaned_pending_orders").passed
    assert check_evaluation(result, "transactions_consistent").passed
    assert materialization_metadata(result, "regularized_orders")["regularized"] == 0


def test_app_orders_observation_counts_orders_by_status(shop, handlers_db, instance):
    shop.orphans(3)
    shop.payment(shop.order(status="completed"))  # a paid order its webhook completed

    result = materialize_all(handlers_db, instance, dry_run=True)

    observations = [
        e.event_specific_data.asset_observation
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    # At the run's start and at its end; a dry run changes nothing in between.
    assert len(observations) == 2
    for observation in observations:
        assert observation.asset_key == dg.AssetKey("app_orders")
        meta = {k: v.value for k, v in observation.metadata.items()}
        assert meta == {"orders_total": 4, "orders_pending": 3, "orders_completed": 1}


def test_run_refuses_while_migrations_are_missing(engine, handlers_db, instance):
    from regularization_pipeline.demo.shop import ShopWriter

    writer = ShopWriter(engine).create()
    order_id = writer.orphan()

    result = materialize_all(handlers_db, instance, raise_on_error=False)

    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == "regularized_orders"
    assert (
        "regularize-completed-orders migrate"
        in failure.step_failure_data.user_failure_data.description
    )
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert writer.status_of(order_id) == "pending"
    assert not sa.inspect(engine).has_table("regularization_audit")


SECRET = "a-webhook-secret-for-tests-only"


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_webhook_publisher_receives_each_event_once_signed(shop, handlers_db, instance):
    orders = shop.orphans(3)
    with ReceivingApp(secret=SECRET) as app:
        publisher = demo_publisher(
            publishers=["webhook", "python"],
            webhook_url=app.url + "/hooks/orders",
            webhook_secret=SECRET,
        )
        result = materialize_all(handlers_db, instance, publisher=publisher)
        received = app.accepted_per_key()

    assert result.success
    assert received == {f"order-completed:{i}": 1 for i in orders}
    assert materialization_metadata(result, "order_completed_events")["delivered"] == 3
    assert effect_counts(shop.engine) == {
        "demo_enrollments": 3,
        "demo_notifications": 3,
        "demo_subscriptions": 3,
    }


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bad_publisher_settings_fail_without_retry_and_keep_events_pending(
    shop, handlers_db, instance
):
    shop.orphans(2)
    publisher = EventPublisherResource(publishers=["webhook"], webhook_secret=SECRET)

    result = materialize_all(handlers_db, instance, raise_on_error=False, publisher=publisher)

    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == "order_completed_events"
    description = failure.step_failure_data.user_failure_data.description
    assert "webhook_url" in description and SECRET not in description
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    # The flips committed with their outbox rows; delivery waits for a run with working settings.
    assert outbox_states(shop.engine) == {tb.PENDING: 2}
