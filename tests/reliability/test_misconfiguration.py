"""A misconfiguration never becomes a wrong write (issue 25): every way of starting a run, and
every operator command, refuses what doctor refuses, in one line, before a row is read or written.

Before the fix, the swapped mapping below put completed orders back through the pipeline and
emitted OrderCompleted for them; a repaired-to status of 'Cancelled' wrote paid orders as
cancelled. Each case is run on SQLite, PostgreSQL and MariaDB against a shop that has both kinds
of order, and every row of the shop and of our tables is compared before and after.
"""

from __future__ import annotations

import dagster as dg
import pytest
import yaml

from regularization_pipeline.defs import operator_jobs
from regularization_pipeline.defs.resources import AppDatabaseResource
from tests.cli import test_operator_tools
from tests.cli.test_operator_tools import snapshot
from tests.support.dagster import materialize_all, resources

run_cli = test_operator_tools.run_cli  # main(argv) -> (code, stdout, stderr)

WRONG_MAPPINGS = {
    "swapped": {"order_pending": ["completed"], "order_completed": "pending"},
    "cancelled_target": {"order_completed": "Cancelled", "order_do_not_touch": []},
    "failed_target": {"order_completed": "failed", "order_do_not_touch": []},
    "failure_as_paid": {"transaction_completed": ["completed", "failed"]},
    "pending_is_do_not_touch": {"order_pending": ["pending", "CANCELLED"]},
    "stray_whitespace": {"order_completed": "completed "},
}


@pytest.fixture(params=sorted(WRONG_MAPPINGS))
def wrong_mapping(request, tmp_path, monkeypatch) -> str:
    path = tmp_path / "mapping.yaml"
    path.write_text(yaml.safe_dump({"statuses": WRONG_MAPPINGS[request.param]}))
    monkeypatch.setenv("REGULARIZATION_SCHEMA_FILE", str(path))
    return str(path)


def refused(stderr: str) -> bool:
    """One line naming the mapping file and its statuses, no traceback."""
    return (
        stderr.startswith("error: invalid ")
        and "mapping.yaml: statuses: " in stderr
        and stderr.count("\n") == 1
    )


def seed(shop) -> None:
    """Orders every wrong mapping would act on: orphans, completed, failed and cancelled ones."""
    shop.orphans(3, paid_minutes_ago=30)
    shop.payment(shop.order(status="completed"), completed_minutes_ago=40)
    shop.payment(shop.order(status="failed"), status="failed", completed_minutes_ago=40)
    shop.payment(shop.order(status="cancelled"), completed_minutes_ago=40)


def test_the_cli_run_refuses_a_wrong_mapping_with_exit_2_and_changes_nothing(
    shop, run_cli, wrong_mapping, tmp_path, monkeypatch
):
    seed(shop)
    before = snapshot(shop)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))

    code, out, err = run_cli("--limit", "5", "--sleep", "0")

    assert code == 2
    assert refused(err)
    assert snapshot(shop) == before


@pytest.mark.parametrize(
    "command", [["doctor"], ["list-orphans"], ["regularize-order", "--order-id", "1"]]
)
def test_doctor_and_operator_commands_refuse_the_same_line(shop, run_cli, wrong_mapping, command):
    seed(shop)
    before = snapshot(shop)

    code, _, err = run_cli(*command)

    assert code == 2
    assert refused(err)
    assert snapshot(shop) == before


def test_the_dagster_run_fails_without_retry_and_changes_nothing(shop, db_url, wrong_mapping):
    seed(shop)
    before = snapshot(shop)
    app_db = AppDatabaseResource(url=db_url, schema_file=wrong_mapping)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*materialize_all.__globals__["ALL_ASSETS"]],
            instance=instance,
            resources={**resources(db_url), "app_db": app_db},
            selection=["regularized_orders"],
            run_config={"ops": {"regularized_orders": {"config": {"sleep": 0, "limit": 5}}}},
            raise_on_error=False,
        )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    data = failure.step_failure_data.user_failure_data
    assert data.description.startswith("invalid ") and ": statuses: " in data.description
    assert snapshot(shop) == before


def test_the_doctor_job_refuses_the_same_mapping(shop, db_url, wrong_mapping):
    seed(shop)
    app_db = AppDatabaseResource(url=db_url, schema_file=wrong_mapping)
    with dg.instance_for_test() as instance:
        result = operator_jobs.doctor.execute_in_process(
            resources={**resources(db_url), "app_db": app_db},
            instance=instance,
            raise_on_error=False,
        )
    assert not result.success


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("oracle://scott@db/orcl", "invalid database URL: 'oracle' is not supported"),
        ("mssql+pyodbc://sa@db/shop", "invalid database URL: 'mssql' is not supported"),
        ("postgresql+asyncpg://u@db/shop", "invalid database URL: the driver 'postgresql+asyncpg'"),
    ],
)
def test_an_unsupported_database_url_is_bad_input_exit_2(run_cli, monkeypatch, url, message):
    """Before issue 25 these failed on a missing driver as an unexpected error (exit 1)."""
    run_cli("--version")  # the fixture's environment first, then the URL under test
    monkeypatch.setenv("REGULARIZATION_DATABASE_URL", url)
    code, _, err = run_cli("list-orphans")
    assert code == 2
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
