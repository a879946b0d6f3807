"""The console script end to end: a subprocess against a real SQLite shop and a temporary Dagster instance."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.test_utils import create_run_for_test

from regularization_pipeline.core.shop import migrations
from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.defs.jobs import JOB_NAME
from regularization_pipeline.demo.shop import ShopWriter
from tests.support import ROOT
from tests.support.dagster import instance_env
from tests.support.processes import table_value

CLI = str(Path(sys.executable).parent / "regularize-completed-orders")


@pytest.fixture
def env(tmp_path):
    return instance_env(tmp_path)


@pytest.fixture
def shop(env):
    engine = create_app_engine(env["REGULARIZATION_DATABASE_URL"])
    yield ShopWriter(engine).create()
    engine.dispose()


def cli(env, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args], env=env, capture_output=True, text=True, timeout=120, cwd=cwd
    )


def runs_of_job(env):
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        return instance.get_runs(filters=dg.RunsFilter(job_name=JOB_NAME))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "0"], "--limit (limit): Input should be greater than or equal to 1"),
        (["--sleep", "-1"], "--sleep (sleep): Input should be greater than or equal to 0"),
        (["--limit", "ten"], "argument --limit: 'ten' is not a whole number"),
        (["--since", "yesterday"], "--since (since)"),
        (["--hours", "0"], "--hours (lookback_hours): Input should be greater than 0"),
        (["--mode", "fast"], "argument --mode: invalid choice: 'fast'"),
    ],
)
def test_bad_input_is_a_usage_error_naming_the_flag_and_changes_nothing(env, shop, args, message):
    order_id = shop.orphan()

    done = cli(env, *args)

    assert done.returncode == 2
    assert message in done.stderr
    assert shop.status_of(order_id) == "pending"
    assert not sa.inspect(shop.engine).has_table("regularization_audit")


def test_migrate_then_run_regularizes_and_records_the_run_in_the_instance(env, shop):
    orders = shop.orphans(3)

    refused = cli(env, "--sleep", "0")
    # Missing tables are bad input: one line, exit 2, before anything runs.
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: the pipeline's own tables (regularization_audit, regularization_outbox, ...) "
        "are missing: run `regularize-completed-orders migrate` first"
    ]
    assert [shop.status_of(i) for i in orders] == ["pending"] * 3

    migrated = cli(env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert f"to revision {migrations.head_revision()}" in migrated.stdout
    assert sa.inspect(shop.engine).has_table("regularization_outbox")

    done = cli(env, "--limit", "2", "--sleep", "0", "--min-age", "5")

    assert done.returncode == 0, done.stdout + done.stderr
    assert table_value(done.stdout, "regularized") == "2"
    # No publisher chosen: the events wait in the outbox for the application, and the
    # report says so.
    assert table_value(done.stdout, "events_delivered") == "0"
    assert table_value(done.stdout, "events_outbox_pending") == "2"
    assert "events: outbox: left in the outbox table for the application to consume" in done.stdout
    assert sorted(shop.status_of(i) for i in orders) == ["completed", "completed", "pending"]
    assert "2/2 regularized order" in done.stderr  # per-order progress, ids only
    runs = runs_of_job(env)
    # The refused run never started: nothing in the instance's history either.
    assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS]
    assert runs[0].tags["regularization/launched_by"] == "cli"
    assert runs[0].run_id in done.stdout


def test_failed_orders_make_a_non_zero_exit(env, shop):
    assert cli(env, "migrate").returncode == 0
    good, bad = shop.orphans(2)
    with shop.engine.begin() as conn:  # the application refuses to update this one order
        conn.exec_driver_sql(
            f"CREATE TRIGGER refuse BEFORE UPDATE ON orders WHEN NEW.id = {bad} BEGIN SELECT RAISE(ABORT, 'no'); END"
        )

    done = cli(env, "--sleep", "0")

    assert done.returncode == 1
    assert table_value(done.stdout, "regularized") == "1"
    assert table_value(done.stdout, "failed") == "1"
    assert (shop.status_of(good), shop.status_of(bad)) == ("completed", "pending")


def test_refuses_to_start_while_a_run_is_in_flight(env, shop):
    assert cli(env, "migrate").returncode == 0
    order_id = shop.orphan()
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        running = create_run_for_test(
            instance, job_name=JOB_NAME, status=dg.DagsterRunStatus.STARTED
        )

    done = cli(env, "--sleep", "0")

    assert done.returncode == 3
    assert f"run {running.run_id} of {JOB_NAME} is STARTED" in done.stderr
    assert shop.status_of(order_id) == "pending"


@pytest.mark.parametrize("command", [["migrate"], ["--limit", "5"]])
def test_migrate_or_a_run_without_a_database_url_is_a_usage_error(env, command):
    del env["REGULARIZATION_DATABASE_URL"]
    done = cli(env, *command)
    assert done.returncode == 2
    assert "REGULARIZATION_DATABASE_URL is not set" in done.stderr
    assert not (Path(env["DAGSTER_HOME"]) / "storage").exists()  # no run was launched


def test_mode_reaches_the_run_config_of_regularized_orders():
    from regularization_pipeline.cli import build_parser, run_config_from_args

    _parser, commands = build_parser()
    run_parser = commands["run"][0]
    args = run_parser.parse_args(["--mode", "batched", "--sleep", "0"])

    assert run_config_from_args(args, run_parser) == {"mode": "batched", "sleep": 0.0}


def test_a_dagster_home_without_dagster_yaml_gets_the_repositorys_in_one_line(env, shop):
    home = Path(env["DAGSTER_HOME"])
    (home / "dagster.yaml").unlink()
    assert cli(env, "migrate").returncode == 0

    done = cli(env, "--limit", "1", "--sleep", "0")

    assert done.returncode == 0, done.stderr
    assert f"created {home / 'dagster.yaml'} from the repository's" in done.stderr
    assert (home / "dagster.yaml").read_text() == (ROOT / "dagster.yaml").read_text()
    assert "telemetry" not in done.stdout.lower() + done.stderr.replace("telemetry off", "")


def test_without_a_repository_dagster_yaml_the_instance_is_refused_in_one_line(tmp_path):
    from regularization_pipeline.cli.launching import ensure_instance_config
    from regularization_pipeline.core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"has no dagster.yaml: copy the repository's"):
        ensure_instance_config(str(tmp_path), template=tmp_path / "missing.yaml")
    assert not (tmp_path / "dagster.yaml").exists()
