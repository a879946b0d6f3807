"""CLI runs started together, killed, or first on a fresh DAGSTER_HOME, as real processes.

One run acts, the others answer busy (exit 3) having changed nothing; a run killed with SIGKILL
blocks nothing; two first starts on one fresh instance leave it usable."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import dagster as dg
import pytest
import sqlalchemy as sa

from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.defs.jobs import JOB_NAME
from tests.cli.test_cli import CLI
from tests.support.databases import migrated_shop
from tests.support.processes import dagster_home, table_value
from tests.support.reliability import figures, url_of
from tests.support.rows import assert_flip_iff_event, audit_rows, outbox_per_order

pytestmark = pytest.mark.slow


def instance_home(tmp_path) -> str:
    return str(dagster_home(tmp_path))


def env_for(url: str, home: str) -> dict[str, str]:
    return {**os.environ, "DAGSTER_HOME": home, "REGULARIZATION_DATABASE_URL": url}


def start(env, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


@pytest.mark.parametrize("runs", [2, 4])
def test_cli_runs_started_together_one_acts_the_others_say_busy(shop, tmp_path, runs):
    ids = shop.orphans(12)
    env = env_for(url_of(shop.engine), instance_home(tmp_path))
    # 12 orders half a second apart: a run lasts longer than the others take to start.
    procs = [start(env, "--sleep", "0.5") for _ in range(runs)]
    done = [finish(p) for p in procs]

    acted = [d for d in done if d[0] == 0]
    busy = [d for d in done if d[0] == 3]
    assert len(acted) + len(busy) == runs, [d[2][-400:] for d in done]
    assert busy, "no run was refused: the runs did not overlap"
    for _code, _out, err in busy:
        assert err.strip().startswith("busy: run ") and len(err.strip().splitlines()) == 1, err
    assert sum(int(table_value(out, "regularized")) for _c, out, _e in acted) == len(ids)
    assert outbox_per_order(shop) == {str(i): 1 for i in ids}
    assert_flip_iff_event(shop)
    figures(
        f"cli runs at once/{shop.engine.dialect.name}",
        runs=runs,
        acted=len(acted),
        busy=len(busy),
        regularized_twice=0,
    )


def test_a_killed_cli_run_blocks_nothing_and_its_record_is_failed(shop, tmp_path):
    ids = shop.orphans(20)
    home = instance_home(tmp_path)
    env = env_for(url_of(shop.engine), home)
    killed = start(env, "--sleep", "1")
    deadline = time.monotonic() + 120
    while not audit_rows(shop):  # killed inside the run, once it has decided an order
        assert time.monotonic() < deadline and killed.poll() is None
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()

    began = time.monotonic()
    code, out, err = finish(start(env, "--sleep", "0"))
    assert code == 0, err[-800:]
    next_run_seconds = time.monotonic() - began
    assert next_run_seconds < 90  # at once: no waiting for a lease or a timeout
    assert outbox_per_order(shop) == {str(i): 1 for i in ids}
    assert_flip_iff_event(shop)
    with dg.DagsterInstance.from_config(home) as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=JOB_NAME))
        statuses = sorted(r.status.value for r in runs)
        failure = next(r for r in runs if r.status == dg.DagsterRunStatus.FAILURE)
        messages = [
            e.message
            for e in instance.all_logs(failure.run_id)
            if e.message and "abandoned" in e.message
        ]
    assert statuses == ["FAILURE", "SUCCESS"]
    assert messages and f"CLI process {killed.pid}" in messages[0]
    figures(
        f"cli run killed/{shop.engine.dialect.name}",
        next_run_exit=code,
        next_run_seconds=round(next_run_seconds, 1),
        killed_record="FAILURE",
    )


def test_two_first_starts_on_one_fresh_dagster_home_leave_it_usable(tmp_path):
    home = instance_home(tmp_path)
    envs = []
    for name in ("a", "b"):  # two shops, so both runs reach the instance at once
        url = f"sqlite:///{tmp_path / f'{name}.db'}"
        engine = create_app_engine(url)
        migrated_shop(engine).orphans(2)
        engine.dispose()
        envs.append(env_for(url, home))
    done = [finish(p) for p in [start(env, "--sleep", "0") for env in envs]]
    # One instance runs one run of the job at a time: the other may answer busy, nothing worse.
    assert sorted(d[0] for d in done)[0] == 0 and {d[0] for d in done} <= {0, 3}, [
        d[2][-800:] for d in done
    ]
    assert not any("head" in d[2] for d in done)
    for env in envs:
        code, _out, err = finish(start(env, "--sleep", "0"))
        assert code == 0, err[-800:]
    with dg.DagsterInstance.from_config(home) as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=JOB_NAME))
        assert len(runs) == 2 + sum(d[0] == 0 for d in done)
    engine = sa.create_engine(f"sqlite:///{home}/history/runs.db")
    with engine.connect() as conn:
        heads = conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar()
    engine.dispose()
    assert heads == 1


@pytest.mark.parametrize(
    "elsewhere",
    [
        {"regularization/host": "another-container"},  # another hostname sharing DAGSTER_HOME
        {"regularization/pid": "1"},  # another PID namespace: its pid is alive here
    ],
    ids=["other host", "other pid namespace"],
)
def test_a_cli_run_killed_in_another_container_blocks_nothing(shop, tmp_path, elsewhere):
    """Issue 25: its record stayed STARTED and 3 of 3 later runs exited 3. The shop's run lock,
    which died with it, is the heartbeat: whoever holds it now knows the record is stale."""
    ids = shop.orphans(10)
    home = instance_home(tmp_path)
    env = env_for(url_of(shop.engine), home)
    killed = start(env, "--sleep", "1")
    deadline = time.monotonic() + 120
    while not audit_rows(shop):
        assert time.monotonic() < deadline and killed.poll() is None
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    with dg.DagsterInstance.from_config(home) as instance:
        (stale,) = instance.get_runs(filters=dg.RunsFilter(job_name=JOB_NAME))
        instance.add_run_tags(stale.run_id, elsewhere)

    code, out, err = finish(start(env, "--sleep", "0"))

    assert code == 0, err[-800:]
    assert outbox_per_order(shop) == {str(i): 1 for i in ids}
    with dg.DagsterInstance.from_config(home) as instance:
        statuses = sorted(
            r.status.value for r in instance.get_runs(filters=dg.RunsFilter(job_name=JOB_NAME))
        )
    assert statuses == ["FAILURE", "SUCCESS"]
