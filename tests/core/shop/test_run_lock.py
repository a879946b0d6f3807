"""The shop's run lock: a second run, in another process, is refused busy and changes nothing;
the holder's death (SIGKILL) frees it at once. PostgreSQL advisory lock, MariaDB GET_LOCK,
SQLite an OS file lock beside the database file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from regularization_pipeline.core.errors import BusyError
from regularization_pipeline.core.regularizer import Regularizer
from regularization_pipeline.core.run import RunOptions
from regularization_pipeline.core.shop import run_lock
from tests.support import ROOT
from tests.support.reliability import url_of
from tests.support.rows import audit_rows, no_sleep, outbox_per_order

HOLD = """
import sys, time
from regularization_pipeline.core.shop import run_lock
from regularization_pipeline.core.shop.engine import create_app_engine
engine = create_app_engine(sys.argv[1])
with run_lock.hold(engine, "regularization_", "holder-run"):
    print("held", flush=True)
    time.sleep(600)
"""


def hold_in_another_process(shop) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, url_of(shop.engine)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_run_while_another_holds_the_lock_is_refused_busy_and_changes_nothing(shop):
    ids = shop.orphans(3)
    holder = hold_in_another_process(shop)
    try:
        with pytest.raises(BusyError) as busy:
            Regularizer(shop.engine, shop.schema, sleeper=no_sleep).run(RunOptions(sleep=0))
    finally:
        holder.kill()
        holder.wait()
    if shop.engine.dialect.name == "mysql":  # MariaDB keeps no note: its connection is named
        assert re.fullmatch(r"busy: run on database connection \d+ since \S+Z", str(busy.value))
    else:
        assert re.fullmatch(r"busy: run holder-run since \d{4}-\d\d-\d\dT\S+Z", str(busy.value))
    assert [shop.status_of(i) for i in ids] == ["pending"] * 3
    assert audit_rows(shop) == [] and outbox_per_order(shop) == {}


def test_the_lock_dies_with_its_holder_and_the_next_run_goes_at_once(shop):
    ids = shop.orphans(3)
    holder = hold_in_another_process(shop)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    began = time.monotonic()
    summary = Regularizer(shop.engine, shop.schema, sleeper=no_sleep).run(RunOptions(sleep=0))
    assert summary.regularized == 3 and time.monotonic() - began < 10
    assert outbox_per_order(shop) == {str(i): 1 for i in ids}


def test_the_lock_is_reentrant_in_its_thread_and_released_after(shop):
    """The CLI holds it around the Dagster run whose Regularizer.run takes it again."""
    shop.orphans(2)
    with run_lock.hold(shop.engine, "regularization_", "cli-run"):
        summary = Regularizer(shop.engine, shop.schema, sleeper=no_sleep).run(RunOptions(sleep=0))
    assert summary.regularized == 2
    with run_lock.hold(shop.engine, "regularization_", "next-run"):
        pass


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("link", ["symlink", "hard link", "hard link in another directory"])
def test_another_name_of_the_same_sqlite_file_is_the_same_lock(shop, link, tmp_path):
    """Keyed on the file (device, inode), not its path: before, a hard link decided orders twice,
    and a hard link in another directory had a lock file of its own."""
    import os

    from regularization_pipeline.core.shop.engine import create_app_engine

    ids = shop.orphans(3)
    path = shop.engine.url.database
    folder = tmp_path / "elsewhere" if link.endswith("directory") else tmp_path
    folder.mkdir(exist_ok=True)
    other = str(folder / "alias.db")
    (os.symlink if link == "symlink" else os.link)(path, other)
    alias = create_app_engine(f"sqlite:///{other}")
    holder = hold_in_another_process(shop)
    try:
        # SQLite itself refuses a hard link of a WAL database (disk I/O error); the lock does not
        # rely on that, nor on the journal mode.
        with pytest.raises(BusyError, match=r"busy: run holder-run since "):
            with run_lock.hold(alias, "regularization_", "second-run"):
                pass
        if link == "symlink":
            with pytest.raises(BusyError, match=r"busy: run holder-run since "):
                Regularizer(alias, shop.schema, sleeper=no_sleep).run(RunOptions(sleep=0))
    finally:
        holder.kill()
        holder.wait()
        alias.dispose()
    assert [shop.status_of(i) for i in ids] == ["pending"] * 3
    assert audit_rows(shop) == [] and outbox_per_order(shop) == {}


HOLD_AS = """
import sys, time
from regularization_pipeline.core.shop import run_lock
from regularization_pipeline.core.shop.engine import create_app_engine
engine = create_app_engine(sys.argv[1])
with run_lock.hold(engine, "regularization_", sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


def _hold(url: str, run_id: str) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_AS, url, run_id], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_postgresql_busy_line_names_this_databases_holder_and_its_start_for_any_login(
    shop,
):
    """Advisory locks are per database: another database's holder of the same key is not ours.
    A login without pg_read_all_stats does not see backend_start: the start is in the name."""
    import sqlalchemy as sa

    from regularization_pipeline.core.shop.engine import create_app_engine
    from tests.support.databases import PG_ADMIN_URL, throwaway_database

    url = url_of(shop.engine)
    role = f"regtest_low_{os.getpid()}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
    low = create_app_engine(str(sa.engine.make_url(url).set(username=role)))
    holders = []
    try:
        with throwaway_database("regtest_other") as other:
            holders.append(_hold(other.render_as_string(hide_password=False), "other-db-run"))
            holders.append(_hold(url, "this-db-run"))
            for engine in (shop.engine, low):
                with pytest.raises(BusyError) as busy:
                    with run_lock.hold(engine, "regularization_", "contender"):
                        pass
                assert re.fullmatch(
                    r"busy: run this-db-run since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", str(busy.value)
                ), str(busy.value)
            for holder in holders:
                holder.kill()
                holder.wait()
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
        low.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        admin.dispose()


def _kill_lock_session(shop, run_id: str) -> None:
    """What idle_session_timeout / wait_timeout do to the idle session holding the lock."""
    import sqlalchemy as sa

    from tests.support.reliability import second_engine

    admin = second_engine(shop.engine)
    with admin.connect() as conn:
        if shop.engine.dialect.name == "postgresql":
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name LIKE :n"
                ),
                {"n": f"regularization {run_id} %"},
            )
        else:
            name = run_lock._mysql_name(shop.engine, "regularization_")
            holder = conn.execute(sa.text("SELECT IS_USED_LOCK(:n)"), {"n": name}).scalar()
            conn.execute(sa.text(f"KILL {int(holder)}"))
    admin.dispose()


@pytest.mark.parametrize("mode", ["per_order", "batched"])
@pytest.mark.parametrize("db_url", ["postgresql", "mariadb"], indirect=True)
def test_a_lost_lock_ends_the_run_before_its_next_decision(shop, mode):
    """Issue 25: when the server dropped the lock's idle session, the run went on deciding
    orders next to a second run, with nothing telling either."""
    from regularization_pipeline.core.errors import RunLockLostError

    ids = shop.orphans(6)
    killed = []

    def after_each(outcome, summary, limit):
        if not killed:
            _kill_lock_session(shop, "lost-lock-run")
            killed.append(outcome.order_id)

    options = RunOptions(sleep=0, mode=mode, batch_size=2)
    with pytest.raises(RunLockLostError, match=r"^run lock lost: the .* holding it was closed"):
        Regularizer(shop.engine, shop.schema, sleeper=no_sleep).run(
            options, run_id="lost-lock-run", progress=after_each
        )
    done = [i for i in ids if shop.status_of(i) == "completed"]
    assert 1 <= len(done) <= 2, done  # the order (or batch) decided before the loss, no more
    assert outbox_per_order(shop) == {str(i): 1 for i in done}
    # The lock is free for the next run, which finishes the job.
    summary = Regularizer(shop.engine, shop.schema, sleeper=no_sleep).run(RunOptions(sleep=0))
    assert summary.regularized == len(ids) - len(done)
