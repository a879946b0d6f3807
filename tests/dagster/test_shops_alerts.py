"""Each shop's alerts are its own: per-shop incidents whose dedup keys and texts name the shop,
and a shop that is down alerts for itself without silencing the others.

The shops file is read when the code location loads, so the runs and the sensor ticks happen in
processes of their own (tests/support/shop_tick.py, tests/support/shop_alerts.py), to a real
webhook receiver in this one.
"""

from __future__ import annotations

import json

from regularization_pipeline.core.regularizer import Regularizer
from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.defs.resources import AppDatabaseResource
from tests.dagster.test_shops import DOWN_URL
from tests.support.databases import migrated_shop
from tests.support.http_stubs import ReceivingApp
from tests.support.rows import quarantine
from tests.support.shop_tick import run_tick

SENSORS = ["alert_on_failed_run", "alert_on_held_orders", "alert_on_dead_events"]
WATCHDOG = "alert_on_no_successful_run"


def test_each_shop_alerts_under_its_own_key_and_a_shop_down_never_silences_the_others(tmp_path):
    urls = {name: f"sqlite:///{tmp_path / f'{name}.db'}" for name in ("a", "b")}
    engines = {name: create_app_engine(url) for name, url in urls.items()}
    shops = {name: migrated_shop(engine) for name, engine in engines.items()}
    held = shops["a"].orphan(paid_minutes_ago=90)
    quarantine(shops["a"], held)  # a held order in shop a only
    fixable = {name: shop.orphan(paid_minutes_ago=90) for name, shop in shops.items()}
    listed = [
        {"name": name, "database_url": {"env": f"SHOP_{name.upper()}_URL"}, "run": {"sleep": 0}}
        for name in ("a", "b", "down")
    ]
    listed.append({"name": "manual", "database_url": {"env": "SHOP_DOWN_URL"}, "scheduled": False})
    cursors = str(tmp_path / "cursors.json")
    with ReceivingApp() as receiver:
        env = {
            "SHOP_A_URL": urls["a"],
            "SHOP_B_URL": urls["b"],
            "SHOP_DOWN_URL": DOWN_URL,
            "REGULARIZATION_ALERT_WEBHOOK_URL": receiver.url + "/alerts",
            "REGULARIZATION_ALERT_WEBHOOK_FORMAT": "json",
            # The watchdog at once: a success is older than this by the next process's tick.
            "REGULARIZATION_ALERT_NO_SUCCESS_MINUTES": "0.001",
        }
        ran = run_tick(tmp_path, listed, env)
        assert [ran[name]["success"] for name in ("a", "b", "down")] == [True, True, False]
        first = run_tick(tmp_path, listed, env, "shop_alerts", cursors, *SENSORS, WATCHDOG)

        regularizer = Regularizer(engines["a"], AppDatabaseResource(url=urls["a"]).bind())
        regularizer.release(held)  # what `regularize-completed-orders release` does
        second = run_tick(tmp_path, listed, env, "shop_alerts", cursors, *SENSORS, WATCHDOG)
        received = [json.loads(r.body) for r in receiver.snapshot()]
    watchdog = [e for e in received if e["details"]["incident"] == "no_successful_run"]
    events = [e for e in received if e not in watchdog]

    # The down shop's run failed: its own incident, with the reason. Shop a's held order: its
    # own incident, raised although the down shop's database could not be read on that tick.
    # The watchdog per shop too: the shops that succeeded a while ago at once, the down shop once
    # its first tick is that old, the shop launched by hand only never.
    assert first.pop(WATCHDOG) == (
        "alert firing: a/no_successful_run; alert firing: b/no_successful_run"
    )
    assert second.pop(WATCHDOG) == "alert firing: down/no_successful_run"
    assert {e["details"]["shop"] for e in watchdog} == {"a", "b", "down"}
    assert first == {
        "alert_on_failed_run": "alert firing: down/run_failed",
        "alert_on_held_orders": "alert firing: a/orders_held",
        "alert_on_dead_events": "no change (none open)",
    }
    assert second == {
        "alert_on_failed_run": "no change (open)",
        "alert_on_held_orders": "alert resolved: a/orders_held",
        "alert_on_dead_events": "no change (none open)",
    }
    assert [(e["dedup_key"], e["action"], e["details"]["shop"]) for e in events] == [
        ("regularization_pipeline/production/down/run_failed", "trigger", "down"),
        ("regularization_pipeline/production/a/orders_held", "trigger", "a"),
        ("regularization_pipeline/production/a/orders_held", "resolve", "a"),
    ]
    failed, opened, resolved = (e["summary"] for e in events)
    assert failed.startswith("[regularization_pipeline] FIRING: down/run_failed: shop down: run ")
    assert "cannot connect to the application database" in failed, failed
    assert opened.startswith("[regularization_pipeline] FIRING: a/orders_held: shop a: 1 paid")
    assert f"1 quarantined (order {held})" in opened
    assert resolved.endswith("shop a: no paid order is held back")
    assert [shops[name].status_of(fixable[name]) for name in ("a", "b")] == ["completed"] * 2
    for engine in engines.values():
        engine.dispose()


def test_a_check_alert_reads_each_shops_own_check_results(tmp_path):
    """The consistency alert of a shop reads the latest check on that shop's partition: shop b's
    amount mismatch alerts for b alone, though a's check ran after it or before it."""
    urls = {name: f"sqlite:///{tmp_path / f'{name}.db'}" for name in ("a", "b")}
    engines = {name: create_app_engine(url) for name, url in urls.items()}
    shops = {name: migrated_shop(engine) for name, engine in engines.items()}
    fixable = {name: shop.orphan(paid_minutes_ago=90) for name, shop in shops.items()}
    mismatched = shops["b"].order(total="49.90", age_minutes=90)
    shops["b"].payment(mismatched, amount="45.00", completed_minutes_ago=90)
    listed = [
        {"name": name, "database_url": {"env": f"SHOP_{name.upper()}_URL"}, "run": {"sleep": 0}}
        for name in ("a", "b")
    ]
    with ReceivingApp() as receiver:
        env = {
            "SHOP_A_URL": urls["a"],
            "SHOP_B_URL": urls["b"],
            "REGULARIZATION_ALERT_WEBHOOK_URL": receiver.url + "/alerts",
            "REGULARIZATION_ALERT_WEBHOOK_FORMAT": "json",
        }
        ran = run_tick(tmp_path, listed, env)
        assert [ran[name]["success"] for name in ("a", "b")] == [True, True]
        sensor = "alert_on_inconsistent_transactions"
        said = run_tick(tmp_path, listed, env, "shop_alerts", str(tmp_path / "c.json"), sensor)
        received = [json.loads(r.body) for r in receiver.snapshot()]
    assert said == {sensor: "alert firing: b/transactions_inconsistent"}
    assert [(e["dedup_key"], e["action"]) for e in received] == [
        ("regularization_pipeline/production/b/transactions_inconsistent", "trigger")
    ]
    assert "1 inconsistent payment(s) need a human: 1 amount_mismatch" in received[0]["summary"]
    assert [shops[name].status_of(fixable[name]) for name in ("a", "b")] == ["completed"] * 2
    assert shops["b"].status_of(mismatched) == "pending"
    for engine in engines.values():
        engine.dispose()
