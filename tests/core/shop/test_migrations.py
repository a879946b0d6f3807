"""Our own tables: Alembic creates them on every backend, again and again without harm, and a run
refuses with the command to type while they are missing. An unreachable database is named, not leaked."""

import datetime as dt

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.delivery.events import new_event, outbox_row
from regularization_pipeline.core.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    MigrationsMissingError,
)
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop import migrations
from regularization_pipeline.core.shop.binding import bind_schema
from regularization_pipeline.core.shop.engine import check_reachable, create_app_engine
from regularization_pipeline.core.shop.mapping import SchemaMapping
from regularization_pipeline.core.shop.tables import owned_tables
from regularization_pipeline.demo.shop import ShopWriter
from tests.support.rows import no_sleep

OURS = ("audit", "outbox", "order_attempts", "event_deliveries", "alembic_version")


def test_run_refuses_until_migrated_and_changes_nothing(engine):
    writer = ShopWriter(engine).create()
    order_id = writer.orphan()
    regularizer = Regularizer(engine, bind_schema(engine, SchemaMapping()), sleeper=no_sleep)
    with pytest.raises(
        MigrationsMissingError, match="are missing: run `regularize-completed-orders migrate` first"
    ):
        regularizer.run(RunOptions(sleep=0))
    assert writer.status_of(order_id) == "pending"
    assert not sa.inspect(engine).has_table("regularization_outbox")

    assert migrations.upgrade(engine, "regularization_") == migrations.head_revision()
    assert regularizer.run(RunOptions(sleep=0)).regularized == 1


def test_the_revisions_a_run_checks_are_alembics_own(engine):
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    def alembics_current() -> str | None:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"version_table": "regularization_alembic_version"}
            )
            return context.get_current_revision()

    assert (
        migrations.head_revision()
        == ScriptDirectory.from_config(migrations._config()).get_current_head()
    )
    assert migrations.current_revision(engine, "regularization_") is None is alembics_current()
    migrations.upgrade(engine, "regularization_", "0002")
    assert migrations.current_revision(engine, "regularization_") == "0002" == alembics_current()
    migrations.upgrade(engine, "regularization_")
    assert migrations.current_revision(engine, "regularization_") == alembics_current()


def test_upgrade_creates_what_the_code_uses_and_is_idempotent(engine):
    head = migrations.head_revision()
    assert migrations.current_revision(engine, "regularization_") is None
    assert migrations.upgrade(engine, "regularization_") == head
    tables = owned_tables("regularization_")
    with engine.begin() as conn:
        conn.execute(
            tables.attempts.insert().values(
                order_id="7",
                failures=2,
                total_attempts=2,
                last_outcome="failed",
                updated_at=sa.func.now(),
            )
        )
    assert (
        migrations.upgrade(engine, "regularization_") == head
    )  # again: a no-op that keeps the data
    migrations.require_migrated(engine, "regularization_")
    inspector = sa.inspect(engine)
    for table in (tables.audit, tables.outbox, tables.attempts, tables.deliveries):
        migrated = {c["name"] for c in inspector.get_columns(table.name)}
        assert migrated == {c.name for c in table.columns}, table.name
    with engine.connect() as conn:
        assert conn.execute(sa.select(tables.attempts.c.failures)).scalar_one() == 2


def test_upgrade_honours_the_table_prefix(engine):
    migrations.upgrade(engine, "acme_reg_")
    names = set(sa.inspect(engine).get_table_names())
    assert {f"acme_reg_{t}" for t in OURS} <= names
    assert not {f"regularization_{t}" for t in OURS} & names
    migrations.require_migrated(engine, "acme_reg_")
    with pytest.raises(MigrationsMissingError, match="regularization_audit"):
        migrations.require_migrated(engine, "regularization_")


def test_a_version_table_behind_head_is_refused(engine):
    migrations.upgrade(engine, "regularization_")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE regularization_alembic_version SET version_num = '0000'"))
    with pytest.raises(
        MigrationsMissingError,
        match="at revision 0000, expected .*regularize-completed-orders migrate",
    ):
        migrations.require_migrated(engine, "regularization_")


@pytest.mark.parametrize(
    "url",
    ["postgresql://reg:s3cr3tpw@127.0.0.1:1/shop", "mysql+pymysql://reg:s3cr3tpw@127.0.0.1:1/shop"],
)
def test_unreachable_database_is_named_without_its_password(url):
    engine = create_app_engine(url, pool_timeout=1)
    with pytest.raises(
        DatabaseUnavailableError, match="cannot connect to the application database"
    ) as err:
        check_reachable(engine)
    assert "127.0.0.1:1" in str(err.value)
    assert "s3cr3tpw" not in str(err.value)


def test_malformed_database_url_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="invalid database URL"):
        create_app_engine("not a url")


def test_timestamps_keep_microseconds_on_every_backend(shop):
    """Leases and backoff are sub-second; MySQL's default DATETIME would round them to seconds."""
    when = dt.datetime(2026, 11, 25, 10, 0, 0, 123456)
    outbox = owned_tables().outbox
    with shop.engine.begin() as conn:
        conn.execute(
            outbox.insert().values(outbox_row(new_event(1, 2, "1.00", "EUR", "run", when), when))
        )
        stored = conn.execute(sa.select(outbox.c.next_attempt_at)).scalar_one()
    assert stored == when
