"""MariaDB TIMESTAMP columns are shown in the reading session's zone: a mapping zone east of
ours makes payments look older and is refused by doctor and by every run; one west is warned.

The issue's case: the application writes through a session at +05:30 (its APP_TIMEZONE,
Asia/Kolkata), the mapping says Asia/Kolkata, and our session shows the columns in UTC. Before
the fix, payments made 3 minutes ago looked 5.5 h old and were completed next to their webhook.
"""

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.operations.doctor import diagnose
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.binding import bind_schema
from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.core.shop.mapping import SchemaMapping
from tests.cli.test_operator_tools import snapshot
from tests.support.databases import migrated_shop
from tests.support.rows import no_sleep

pytestmark = pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)


def kolkata_application(db_url):
    """The application's own engine: its sessions show and take times at +05:30."""
    app = create_app_engine(db_url)
    sa.event.listen(
        app, "connect", lambda dbapi, _: dbapi.cursor().execute("SET time_zone = '+05:30'")
    )
    return app


def test_a_mapping_zone_east_of_the_session_is_refused_and_nothing_is_changed(db_url, engine):
    app = kolkata_application(db_url)
    mapping = SchemaMapping(timezone="Asia/Kolkata")
    writer = migrated_shop(app, mapping, time_type=mysql.TIMESTAMP(fsp=6))
    just_paid = [writer.orphan(paid_minutes_ago=minutes) for minutes in (3, 5, 8)]
    app.dispose()
    schema = bind_schema(engine, mapping)  # our engine: the server's zone, UTC here
    shop = writer
    shop.engine = engine
    before = snapshot(shop)

    with engine.connect() as conn:
        report = diagnose(conn, schema)
    with pytest.raises(ConfigurationError) as caught:
        Regularizer(engine, schema, sleeper=no_sleep).run(RunOptions(sleep=0, limit=5))

    expected = (
        "this session shows TIMESTAMP columns (orders.created_at, orders.deleted_at, "
        "orders.updated_at, transactions.completed_at, transactions.updated_at) at UTC+00:00, "
        "but timezone Asia/Kolkata is UTC+05:30: payments would look 5.5 h older than they "
        "are and the grace period would be cut short"
    )
    assert report.refusals[0].startswith(expected)
    assert str(caught.value).startswith(expected)
    assert snapshot(shop) == before
    assert [shop.status_of(o) for o in just_paid] == ["pending"] * 3


def test_a_mapping_zone_west_of_the_session_only_warns(engine):
    shop = migrated_shop(
        engine, SchemaMapping(timezone="America/New_York"), time_type=mysql.TIMESTAMP(fsp=6)
    )
    shop.orphan(paid_minutes_ago=30)
    with engine.connect() as conn:
        report = diagnose(conn, shop.schema)
    assert report.refusals == []
    assert any("younger than they are and are fixed late" in w for w in report.warnings)


def test_datetime_columns_are_not_concerned(engine):
    shop = migrated_shop(engine, SchemaMapping(timezone="Asia/Kolkata"))
    shop.orphan(paid_minutes_ago=30)
    with engine.connect() as conn:
        report = diagnose(conn, shop.schema)
    assert not any("TIMESTAMP" in line for line in report.refusals + report.warnings)
