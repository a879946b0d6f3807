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


def run_job(instance, db_url: str, schema_file: str, **config):
    """The scheduled job's run (regularized_orders) with app_db.schema_file as given."""
    app_db = AppDatabaseResource(url=db_url, schema_file=schema_file)
    return dg.materialize(
        [*materialize_all.__globals__["ALL_ASSETS"]],
        instance=instance,
        resources={**resources(db_url), "app_db": app_db},
        selection=["regularized_orders"],
        run_config={"ops": {"regularized_orders": {"config": {"sleep": 0, **config}}}},
        raise_on_error=False,
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
    with dg.instance_for_test() as instance:
        result = run_job(instance, db_url, wrong_mapping, limit=5)
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


# Sound words, wrong for this shop: only its rows tell (core/detection/shop_rules.py). Before the
# fix doctor refused them and a run acted on them with exit 0: 'shipped' (what no paid order
# has become) was written on the 3 orphans; a misspelt completed word left every orphan unfound
# (on MariaDB's _ci collation it found them, and doctor still refused).
ROW_WRONG_MAPPINGS = {
    "unpaid_target": (
        {"order_completed": "shipped"},
        "no order in the repaired status 'shipped' has a completed payment",
    ),
    "misspelt_completed": (
        {"transaction_completed": ["Completed"]},
        "transaction status 'Completed' is listed as completed but no transaction has it",
    ),
}


@pytest.fixture(params=sorted(ROW_WRONG_MAPPINGS))
def row_wrong_mapping(request, tmp_path, monkeypatch) -> tuple[str, str]:
    statuses, refusal = ROW_WRONG_MAPPINGS[request.param]
    path = tmp_path / "mapping.yaml"
    path.write_text(yaml.safe_dump({"statuses": statuses}))
    monkeypatch.setenv("REGULARIZATION_SCHEMA_FILE", str(path))
    return str(path), refusal


def row_seed(shop) -> None:
    seed(shop)
    shop.order(status="shipped")  # shipped without a payment: a status of its own in this shop


@pytest.mark.parametrize(
    "command",
    [
        ["--limit", "5", "--sleep", "0"],
        ["regularize-order", "--order-id", "1"],
        ["release", "--order-id", "1"],
        ["list-orphans"],
    ],
)
def test_every_run_and_operator_command_refuses_what_the_rows_refuse(
    shop, run_cli, row_wrong_mapping, command, tmp_path, monkeypatch
):
    row_seed(shop)
    before = snapshot(shop)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))

    code, _, err = run_cli(*command)

    assert (code, err.count("\n")) == (2, 1), err
    assert err.startswith(f"error: {row_wrong_mapping[1]}")
    assert snapshot(shop) == before
    code, out, _ = run_cli("doctor")
    assert code == 2 and f"REFUSED: {row_wrong_mapping[1]}" in out


def test_the_dagster_run_and_the_operator_job_refuse_what_the_rows_refuse(
    shop, db_url, row_wrong_mapping
):
    row_seed(shop)
    before = snapshot(shop)
    app_db = AppDatabaseResource(url=db_url, schema_file=row_wrong_mapping[0])
    with dg.instance_for_test() as instance:
        run = run_job(instance, db_url, row_wrong_mapping[0], limit=5)
        one = operator_jobs.regularize_one_order.execute_in_process(
            run_config={"ops": {"regularize_named_order": {"config": {"order_id": "1"}}}},
            resources={**resources(db_url), "app_db": app_db},
            instance=instance,
            raise_on_error=False,
        )
    for result in (run, one):
        (failure,) = result.get_step_failure_events()
        assert failure.step_failure_data.user_failure_data.description.startswith(
            row_wrong_mapping[1]
        )
    assert snapshot(shop) == before


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


@pytest.mark.parametrize("command", [["doctor"], ["--limit", "1"], ["list-orphans"]])
def test_a_mapping_file_the_process_may_not_read_is_bad_input_exit_2(command):
    """Before, unverified: the suite runs as root, which reads any file. The command runs here
    as an unprivileged user (uid 65534) on a mapping file only root may read."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    as_nobody: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.fail("setpriv (util-linux) is needed to run the command without root")
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    folder = tempfile.mkdtemp(prefix="unreadable-mapping-")
    try:
        os.chmod(folder, 0o755)
        mapping = os.path.join(folder, "mapping.yaml")
        with open(mapping, "w") as f:
            f.write("statuses: {order_completed: completed}\n")
        os.chmod(mapping, 0o600 if as_nobody else 0o000)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": folder,
            "DAGSTER_HOME": folder,
            "REGULARIZATION_DATABASE_URL": f"sqlite:///{folder}/shop.db",
            "REGULARIZATION_SCHEMA_FILE": mapping,
        }
        done = subprocess.run(
            [*as_nobody, sys.executable, "-m", "regularization_pipeline.cli", *command],
            env=env,
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"error: cannot read schema mapping file {mapping!r}: Permission denied\n"


def test_the_launchpad_schema_file_is_only_a_file_the_deployment_allows(
    shop, db_url, tmp_path, monkeypatch
):
    """Before, app_db.schema_file could name any file the process may read (/etc/shadow
    included: its errors were not echoed, but it was opened and parsed)."""
    seed(shop)
    before = snapshot(shop)
    allowed = tmp_path / "mappings"
    allowed.mkdir()
    (allowed / "shop.yaml").write_text("statuses: {order_completed: completed}\n")
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text("statuses: {order_completed: completed}\n")
    monkeypatch.delenv("REGULARIZATION_SCHEMA_FILE", raising=False)
    monkeypatch.setenv("REGULARIZATION_MAPPINGS_DIR", str(allowed))

    def run(schema_file: str):
        with dg.instance_for_test() as instance:
            return run_job(instance, db_url, schema_file, dry_run=True)

    for refused_path in ("/etc/shadow", str(outside), str(allowed / ".." / "elsewhere.yaml")):
        result = run(refused_path)
        (failure,) = result.get_step_failure_events()
        assert failure.step_failure_data.user_failure_data.description == (
            "app_db.schema_file names neither the file of REGULARIZATION_SCHEMA_FILE nor a file "
            "in REGULARIZATION_MAPPINGS_DIR: a run reads only the mapping files its deployment "
            "allows"
        )
    assert snapshot(shop) == before
    assert run(str(allowed / "shop.yaml")).success
    monkeypatch.delenv("REGULARIZATION_MAPPINGS_DIR")
    monkeypatch.setenv("REGULARIZATION_SCHEMA_FILE", str(outside))
    assert run(str(outside)).success
