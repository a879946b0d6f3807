"""Database faults on PostgreSQL and MariaDB: killed connections, held rows, lock wait timeouts,
a deadlock, and a database that is not there at all. Orders fail one at a time with the error
class in their reason, and none is ever half-written (a flip without its event or the reverse)."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.errors import DatabaseUnavailableError
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.binding import bind_schema, build_schema
from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.core.shop.mapping import SchemaMapping
from regularization_pipeline.core.shop.tables import owned_tables
from regularization_pipeline.core.verdicts import FAILED
from tests.support.reliability import figures, kill_other_sessions, second_engine
from tests.support.rows import assert_flip_iff_event, no_sleep

MODES = ["per_order", "batched"]


def rerun(shop) -> None:
    Regularizer(shop.engine, shop.schema, sleeper=no_sleep).run(RunOptions(sleep=0, limit=1000))


def test_connection_killed_while_the_run_sleeps_between_orders_costs_nothing(server_shop):
    """The next order finds the shared connection dead at its first statement and starts again
    on a fresh one: no order fails."""
    shop = server_shop
    ids = shop.orphans(12)
    admin = second_engine(shop.engine)
    kills = []

    def sleeper(_seconds):
        if len(kills) < 3:  # between the first orders
            kills.append(kill_other_sessions(admin))

    summary = Regularizer(shop.engine, shop.schema, sleeper=sleeper).run(
        RunOptions(mode="per_order", sleep=0.01)
    )
    admin.dispose()
    assert (summary.regularized, summary.failed) == (len(ids), 0)
    assert sum(kills) >= 3
    assert_flip_iff_event(shop)
    figures(
        f"db faults/{shop.engine.dialect.name}/killed between orders",
        sessions_killed=sum(kills),
        orders=len(ids),
        failed=0,
    )


@pytest.mark.parametrize("mode", MODES)
def test_connection_killed_inside_an_order_fails_only_that_order(server_shop, mode):
    shop = server_shop
    ids = shop.orphans(30)
    victim = ids[7]
    admin = second_engine(shop.engine)
    killed = []

    def fault(point, order_id):
        # Killed after the flip, before the outbox row: the worst place for a half-written order.
        if point == "after_flip" and order_id == victim and not killed:
            killed.append(kill_other_sessions(admin))
            time.sleep(0.2)  # PostgreSQL terminates the backend asynchronously

    summary = Regularizer(shop.engine, shop.schema, sleeper=no_sleep, fault=fault).run(
        RunOptions(mode=mode, sleep=0, batch_size=10)
    )
    admin.dispose()
    failed = [o for o in summary.outcomes if o.action == FAILED]
    assert killed and killed[0] >= 1
    if mode == "per_order":
        # The order's transaction died with its connection: it fails alone, with the error class.
        assert [o.order_id for o in failed] == [victim]
        assert "OperationalError" in failed[0].reason
        assert summary.regularized == len(ids) - 1
        assert shop.status_of(victim) == "pending"
    else:
        # The batch rolled back whole and was decided again one order at a time: the transient error cost nothing.
        assert failed == [] and summary.regularized == len(ids)
    assert_flip_iff_event(shop)
    rerun(shop)
    assert shop.status_of(victim) == "completed"
    assert_flip_iff_event(shop)
    figures(
        f"db faults/{shop.engine.dialect.name}/{mode}/killed inside an order",
        sessions_killed=killed[0],
        failed=len(failed),
        reason=failed[0].reason.split(":")[0] if failed else "batch retried per order",
        half_written=0,
    )


@pytest.mark.parametrize("mode", MODES)
def test_order_row_held_by_another_connection_is_skipped_and_left_for_the_next_run(
    server_shop, mode
):
    shop = server_shop
    ids = shop.orphans(20)
    held = ids[5]
    orders = shop.tables.orders
    app = second_engine(shop.engine)
    # A wait shows as a 5 s timeout instead of InnoDB's default 50 s.
    engine = _lock_timeout_engine(shop, LOCK_WAIT_SECONDS)
    with app.connect() as holder:
        tx = holder.begin()
        holder.execute(sa.select(orders.c.id).where(orders.c.id == held).with_for_update())
        began = time.monotonic()
        summary = Regularizer(engine, shop.schema, sleeper=no_sleep).run(
            RunOptions(mode=mode, sleep=0)
        )
        took = time.monotonic() - began
        tx.rollback()
    app.dispose()
    engine.dispose()
    assert summary.regularized == len(ids) - 1 and summary.failed == 0
    assert shop.status_of(held) == "pending"
    # On MariaDB a batch used to wait here for innodb_lock_wait_timeout: under REPEATABLE READ its
    # flip (an UPDATE over an index range) waited on the held row it was not even flipping. The
    # engine now runs READ COMMITTED, where InnoDB passes such rows by.
    # A wait ends in the 5 s timeout; the run itself takes well under that on a loaded machine.
    assert took < LOCK_WAIT_SECONDS, "the run waited for the held row instead of skipping it"
    assert_flip_iff_event(shop)
    rerun(shop)
    assert shop.status_of(held) == "completed"
    figures(
        f"db faults/{shop.engine.dialect.name}/{mode}/held row",
        run_seconds=round(took, 2),
        skipped=1,
        left_for_next_run=1,
    )


LOCK_WAIT_SECONDS = 5


def _lock_timeout_engine(shop, seconds: int = 1) -> sa.Engine:
    """The run's engine with a short lock wait, as an operator would configure against long waits."""
    engine = second_engine(shop.engine)

    @sa.event.listens_for(engine, "connect")
    def _short_waits(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        if engine.dialect.name == "postgresql":
            cursor.execute(f"SET lock_timeout = '{seconds}s'")
        else:
            cursor.execute(f"SET SESSION innodb_lock_wait_timeout = {seconds}")
        cursor.close()
        dbapi_connection.commit()  # else the pool's reset rolls PostgreSQL's SET back

    return engine


@pytest.mark.parametrize("mode", MODES)
def test_lock_wait_timeout_on_the_attempts_row_fails_only_that_order(server_shop, mode):
    """An operator's transaction holds the order's attempts row (say, a release in progress):
    the run's update of that row times out; that order fails with the error class, the rest go on."""
    shop = server_shop
    ids = shop.orphans(10)
    victim = ids[3]
    at = owned_tables().attempts
    now = dt.datetime(2026, 1, 1)
    with shop.engine.begin() as conn:
        conn.execute(
            at.insert().values(
                order_id=str(victim),
                failures=1,
                total_attempts=1,
                last_outcome=FAILED,
                updated_at=now,
            )
        )
    engine = _lock_timeout_engine(shop)
    operator = second_engine(shop.engine)
    with operator.connect() as holder:
        tx = holder.begin()
        holder.execute(sa.select(at).where(at.c.order_id == str(victim)).with_for_update())
        summary = Regularizer(engine, shop.schema, sleeper=no_sleep).run(
            RunOptions(mode=mode, sleep=0)
        )
        tx.rollback()
    failed = [o for o in summary.outcomes if o.action == FAILED]
    assert [o.order_id for o in failed] == [victim]
    # The class and the server's code, never its message (#26).
    expected = "LockNotAvailable" if engine.dialect.name == "postgresql" else "MariaDB error 1205"
    assert expected in failed[0].reason
    assert summary.regularized == len(ids) - 1
    assert_flip_iff_event(shop)
    engine.dispose()
    operator.dispose()
    rerun(shop)
    assert shop.status_of(victim) == "completed"
    assert_flip_iff_event(shop)
    figures(
        f"db faults/{shop.engine.dialect.name}/{mode}/lock wait timeout",
        failed=1,
        reason=failed[0].reason[:80],
    )


def test_deadlock_with_the_application_fails_one_side_cleanly(server_shop):
    """A real deadlock: the run holds the order and wants its attempts row; an operator's transaction
    holds the attempts row and wants the order. The database aborts one side; whichever it is,
    the order ends up either flipped with its one event or untouched, and a rerun completes it."""
    shop = server_shop
    ids = shop.orphans(5)
    victim = ids[2]
    at, orders = owned_tables().attempts, shop.tables.orders
    with shop.engine.begin() as conn:
        conn.execute(
            at.insert().values(
                order_id=str(victim),
                failures=1,
                total_attempts=1,
                last_outcome=FAILED,
                updated_at=dt.datetime(2026, 1, 1),
            )
        )
    operator = second_engine(shop.engine)
    holding, app_errors = threading.Event(), []

    def operator_transaction():
        try:
            with operator.begin() as conn:
                conn.execute(sa.select(at).where(at.c.order_id == str(victim)).with_for_update())
                holding.set()
                conn.execute(
                    orders.update()
                    .where(orders.c.id == victim)
                    .values(updated_at=dt.datetime(2026, 1, 2))
                )
        except sa.exc.DBAPIError as exc:
            app_errors.append(exc)
        finally:
            holding.set()

    worker = threading.Thread(target=operator_transaction)

    def fault(point, order_id):
        if (
            point == "after_lock"
            and order_id == victim
            and not worker.is_alive()
            and not holding.is_set()
        ):
            worker.start()
            holding.wait(10)
            time.sleep(0.3)  # the operator is now waiting on our row lock

    summary = Regularizer(shop.engine, shop.schema, sleeper=no_sleep, fault=fault).run(
        RunOptions(mode="per_order", sleep=0)
    )
    worker.join(30)
    operator.dispose()
    run_failed = [o for o in summary.outcomes if o.action == FAILED]
    deadlock_words = ("DeadlockDetected", "Deadlock found", "deadlock", "MariaDB error 1213")
    run_lost = bool(run_failed) and any(w in run_failed[0].reason for w in deadlock_words)
    app_lost = bool(app_errors) and any(w in str(app_errors[0]) for w in deadlock_words)
    assert run_lost != app_lost, (
        run_failed,
        app_errors,
    )  # exactly one side was the deadlock victim
    assert_flip_iff_event(shop)
    rerun(shop)
    assert shop.status_of(victim) == "completed"
    assert_flip_iff_event(shop)
    figures(
        f"db faults/{shop.engine.dialect.name}/deadlock",
        victim="run" if run_lost else "operator",
        run_reason=run_failed[0].reason[:80] if run_failed else "-",
        half_written=0,
    )


# --- the database is not there ---------------------------------------------------------------

PASSWORD = "n0t-In-Logs-7"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://reg:{PASSWORD}@127.0.0.1:1/shop",
        f"mysql+pymysql://reg:{PASSWORD}@127.0.0.1:1/shop",
    ],
)
def test_database_down_at_start_fails_the_run_cleanly(url):
    from regularization_pipeline.defs.resources import AppDatabaseResource

    # What the job does first: reach the database, with its address named and its password hidden.
    with pytest.raises(
        DatabaseUnavailableError, match="cannot connect to the application database"
    ) as err:
        AppDatabaseResource(url=url).bind()
    assert "127.0.0.1:1" in str(err.value) and PASSWORD not in str(err.value)
    # Core called directly still stops before any work, without the password in the error.
    engine = create_app_engine(url, pool_timeout=1)
    with pytest.raises(sa.exc.OperationalError) as raw:
        Regularizer(engine, build_schema(SchemaMapping()), sleeper=no_sleep).run(
            RunOptions(sleep=0)
        )
    assert PASSWORD not in str(raw.value) and "127.0.0.1" in str(raw.value)
    figures(f"db faults/{engine.dialect.name}/down at start", error=str(err.value)[:120])


class DatabaseTakenAway:
    """Makes the run's database refuse new connections and ends the open ones, then gives it back.

    PostgreSQL: the database stops accepting connections. MariaDB: the run connects as a
    user of its own, whose account is locked (root cannot be).
    """

    def __init__(self, shop):
        self.url, self.name = shop.engine.url, shop.engine.url.database
        self.admin = create_app_engine(
            self.url.set(database="postgres").render_as_string(hide_password=False)
            if self.url.get_backend_name() == "postgresql"
            else self.url.render_as_string(hide_password=False)
        )
        self.user = f"reggone{os.getpid()}"
        self.hosts = ("%", "localhost", "127.0.0.1")
        if self.mariadb:
            with self.admin.begin() as conn:
                for host in self.hosts:
                    conn.execute(sa.text(f"CREATE USER IF NOT EXISTS '{self.user}'@'{host}'"))
                    conn.execute(sa.text(f"GRANT ALL ON {self.name}.* TO '{self.user}'@'{host}'"))

    @property
    def mariadb(self) -> bool:
        return self.url.get_backend_name() != "postgresql"

    def run_url(self) -> str:
        return (
            self.url.set(username=self.user, password=None) if self.mariadb else self.url
        ).render_as_string(hide_password=False)

    def take(self) -> None:
        with self.admin.begin() as conn:
            if self.mariadb:
                for host in self.hosts:
                    conn.execute(sa.text(f"ALTER USER '{self.user}'@'{host}' ACCOUNT LOCK"))
                for session in (
                    conn.execute(
                        sa.text("SELECT id FROM information_schema.processlist WHERE user = :u"),
                        {"u": self.user},
                    )
                    .scalars()
                    .all()
                ):
                    try:
                        conn.execute(sa.text(f"KILL {int(session)}"))
                    except sa.exc.OperationalError:  # it ended on its own meanwhile
                        pass
            else:
                conn.execute(sa.text(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS false"))
                kill_other_sessions_of(self.admin, self.name)

    def give_back(self) -> None:
        with self.admin.begin() as conn:
            if self.mariadb:
                for host in self.hosts:
                    conn.execute(sa.text(f"DROP USER IF EXISTS '{self.user}'@'{host}'"))
            else:
                conn.execute(sa.text(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS true"))
        self.admin.dispose()


def test_database_gone_mid_run_stops_the_run_with_a_clear_error(server_shop):
    """The database refuses new connections mid-run: the run stops at the first order it cannot even
    report (instead of failing every order left, one connection attempt each) with an error naming the
    database (no password); nothing is half-written, and the next run finishes the work."""
    shop = server_shop
    ids = shop.orphans(10)
    gone = DatabaseTakenAway(shop)
    engine = create_app_engine(gone.run_url())
    calls = []

    def sleeper(_seconds):
        calls.append(1)
        if len(calls) == 3:
            gone.take()

    try:
        with pytest.raises(DatabaseUnavailableError) as refused:
            Regularizer(engine, bind_schema(engine, shop.mapping), sleeper=sleeper).run(
                RunOptions(mode="per_order", sleep=0.01, batch_size=50)
            )
    finally:
        engine.dispose()
        gone.give_back()
    assert "cannot connect to the application database" in str(refused.value) and gone.name in str(
        refused.value
    )
    assert len(calls) == 3  # no order was tried after the one that found the database gone
    shop.engine.dispose()
    assert sorted(shop.status_of(i) for i in ids).count("completed") == 3
    assert_flip_iff_event(shop)
    rerun(shop)
    assert all(shop.status_of(i) == "completed" for i in ids)
    assert_flip_iff_event(shop)
    figures(
        f"db faults/{shop.engine.dialect.name}/gone mid-run",
        regularized_before=3,
        orders_tried_while_gone=1,
        error=str(refused.value)[:120],
        half_written=0,
    )


def kill_other_sessions_of(admin: sa.Engine, database: str) -> None:
    with admin.connect() as conn:
        conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :db AND pid <> pg_backend_pid()"
            ),
            {"db": database},
        )
