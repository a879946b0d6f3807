"""Many shops in one code location: each shop a partition, one tick of the schedule a run per shop.

The shops file is read when the code location loads, so these tests run the tick in a process
of its own (tests/support/shop_tick.py), as every Dagster process loads the definitions.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.shop.engine import create_app_engine
from tests.support.databases import clean_url, migrated_shop
from tests.support.rows import outbox_per_order, owned
from tests.support.shop_tick import run_tick

# A PostgreSQL port nothing listens on: the shop whose server is down.
DOWN_URL = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=2"


def regularized_audit_rows(shop) -> int:
    audit = owned(shop).audit
    with shop.engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).where(audit.c.action == "regularized")
        ).scalar_one()


@pytest.fixture
def three_shops(server_databases, tmp_path):
    """A shop on each backend, three orphans each, and their URLs by shop name."""
    urls = {
        "lite": clean_url("sqlite", server_databases, tmp_path),
        "pg": clean_url("postgresql", server_databases, tmp_path),
        "maria": clean_url("mariadb", server_databases, tmp_path),
    }
    seeded, engines = {}, {}
    for name, url in urls.items():
        engines[name] = create_app_engine(url)
        shop = migrated_shop(engines[name])
        seeded[name] = (shop, [shop.orphan(paid_minutes_ago=90 + i) for i in range(3)])
    yield urls, seeded
    for engine in engines.values():
        engine.dispose()


def test_one_tick_fixes_each_shops_orphans_once_and_a_shop_down_fails_only_its_own_run(
    three_shops, tmp_path
):
    urls, seeded = three_shops
    env = {f"SHOP_{name.upper()}_URL": url for name, url in urls.items()}
    env["SHOP_DOWN_URL"] = DOWN_URL
    shops = [
        {"name": name, "database_url": {"env": f"SHOP_{name.upper()}_URL"}, "run": {"sleep": 0}}
        for name in [*urls, "down"]
    ]
    shops.append({"name": "manual", "database_url": {"env": "SHOP_DOWN_URL"}, "scheduled": False})

    outcome = run_tick(tmp_path, shops, env)
    others = outcome.pop("_other_schedules")
    checked = outcome.pop("_checks")

    assert set(outcome) == {"lite", "pg", "maria", "down"}  # "manual" is not scheduled
    # The delivery schedule serves each shop: a run per shop with an event due (no publisher
    # is configured here, so each shop's three events wait); the down shop's outbox cannot be
    # read and is skipped, not an error. The checks schedule asks a run only for the shop whose
    # fix run failed: the others' checks ran at the end of their own run.
    assert others["deliver_order_completed_events_every_minute"] == ["lite", "maria", "pg"]
    assert others["check_app_orders_every_2_minutes"] == ["down"]
    # The checks job, run for each shop, reads that shop: none is left with an orphan (the
    # manual shop and the down shop point at a server that is down: their checks fail).
    assert checked == {
        **{name: {"no_orphaned_pending_orders": 0} for name in seeded},
        "down": {"success": False},
        "manual": {"success": False},
    }
    for name, (shop, orphans) in seeded.items():
        assert outcome[name]["success"], (name, outcome[name]["failures"])
        assert [shop.status_of(order) for order in orphans] == ["completed"] * 3
        assert set(outbox_per_order(shop).values()) == {1}  # one OrderCompleted each
        assert len(outbox_per_order(shop)) == 3
        assert regularized_audit_rows(shop) == 3
        run = outcome[name]
        assert run["tags"]["dagster/partition"] == name == run["tags"]["regularization/shop"]
        assert json.loads(run["tags"]["dagster-k8s/config"])["job_metadata"]["labels"] == {
            "regularization/shop": name
        }
        assert run["run_key"] == f"{name}:20260101T120500Z"
        assert "regularization/concurrency" not in run["tags"]  # per shop, not one at a time
    down = outcome["down"]
    assert not down["success"]
    assert any(
        "cannot connect to the application database" in failure for failure in down["failures"]
    ), down
