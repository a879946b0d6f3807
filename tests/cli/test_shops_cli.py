"""The console script with a shops file: `--shop NAME` picks the shop, `doctor` alone gives every
shop's verdict in one table, and a bad shops file is one line, exit 2, nothing changed."""

from __future__ import annotations

import dagster as dg
import yaml

from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.defs.jobs import JOB_NAME
from tests.cli.test_cli import cli
from tests.support.dagster import instance_env
from tests.support.databases import migrated_shop
from tests.support.processes import table_value


def shops_env(tmp_path, shops: list[dict], **env) -> dict:
    base = instance_env(tmp_path)
    base.pop("REGULARIZATION_DATABASE_URL")
    path = tmp_path / "shops.yaml"
    path.write_text(yaml.safe_dump({"shops": shops}))
    return {**base, "REGULARIZATION_SHOPS_FILE": str(path), **env}


def two_shops(tmp_path):
    """Shops `eu` and `us` (SQLite files), two orphans each, and the environment naming them."""
    shops, writers = [], {}
    for name in ("eu", "us"):
        url = f"sqlite:///{tmp_path / f'{name}.db'}"
        writers[name] = migrated_shop(create_app_engine(url))
        writers[name].orphans_ids = writers[name].orphans(2, paid_minutes_ago=30)
        shops.append({"name": name, "database_url": {"env": f"SHOP_{name.upper()}_URL"}})
    env = shops_env(
        tmp_path,
        shops,
        SHOP_EU_URL=f"sqlite:///{tmp_path / 'eu.db'}",
        SHOP_US_URL=f"sqlite:///{tmp_path / 'us.db'}",
    )
    return env, writers


def test_run_with_shop_regularizes_that_shop_only_as_its_partition(tmp_path):
    env, writers = two_shops(tmp_path)

    done = cli(env, "--shop", "eu", "--sleep", "0", "--min-age", "5")

    assert done.returncode == 0, done.stdout + done.stderr
    assert table_value(done.stdout, "regularized") == "2"
    eu, us = writers["eu"], writers["us"]
    assert [eu.status_of(i) for i in eu.orphans_ids] == ["completed"] * 2
    assert [us.status_of(i) for i in us.orphans_ids] == ["pending"] * 2
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        (run,) = instance.get_runs(filters=dg.RunsFilter(job_name=JOB_NAME))
    assert run.tags["dagster/partition"] == "eu" == run.tags["regularization/shop"]


def test_run_without_shop_or_with_an_unknown_one_is_one_line_exit_2(tmp_path):
    env, writers = two_shops(tmp_path)

    unnamed = cli(env, "--sleep", "0")
    unknown = cli(env, "--shop", "asia", "--sleep", "0")

    assert unnamed.returncode == unknown.returncode == 2
    assert unnamed.stderr.strip().splitlines() == [
        "error: REGULARIZATION_SHOPS_FILE lists shops eu, us: pick one with --shop NAME"
    ]
    assert unknown.stderr.strip().splitlines() == [
        "error: shop 'asia' is not in REGULARIZATION_SHOPS_FILE (its shops: eu, us)"
    ]
    for shop in writers.values():
        assert [shop.status_of(i) for i in shop.orphans_ids] == ["pending"] * 2


def test_doctor_alone_gives_every_shops_verdict_and_one_shop_down_exits_2(tmp_path):
    env, _ = two_shops(tmp_path)
    env["SHOP_US_URL"] = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=2"

    table = cli(env, "doctor")
    one = cli(env, "doctor", "--shop", "eu")

    assert table.returncode == 2
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["shop", "verdict"]
    assert lines[2].startswith("eu ") and "ready" in lines[2]
    assert lines[3].startswith("us ") and "cannot connect to the application database" in lines[3]
    assert table.stderr.strip().splitlines() == [
        "error: 1 of 2 shop(s) not ready: `doctor --shop NAME` says why"
    ]
    assert one.returncode == 0, one.stderr
    assert one.stdout.splitlines()[-1] == "verdict: ready, the schedule can be switched on"


def test_an_inline_database_url_in_the_shops_file_is_refused_in_one_line(tmp_path):
    env = shops_env(tmp_path, [{"name": "eu", "database_url": "postgresql://shop:hunter2@db/eu"}])

    refused = cli(env, "doctor")

    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "shop 'eu': database_url: must be {env: VARIABLE} or {file: PATH}" in line
    assert "hunter2" not in refused.stderr + refused.stdout
