"""The shop's time zone: naive wall-clock columns in the mapping's zone, timestamptz as it is.

Every shop here is a few orders, written the way the application writes them
(``ShopWriter.at``), decided by a run whose clock is fixed, so the grace period
and the lookback are checked to the minute on each side.
"""

import datetime as dt

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from regularization_pipeline.core.clock import from_shop, shop_zone
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.core.shop.mapping import SchemaMapping
from tests.support.databases import migrated_shop
from tests.support.rows import no_sleep, outbox_per_order

NOW = dt.datetime(2026, 6, 15, 12, 0)  # naive UTC, whole seconds (DATETIME keeps none finer)
NEW_YORK = "America/New_York"


def zoned_shop(engine, zone: str, now: dt.datetime = NOW, **writer):
    return migrated_shop(engine, SchemaMapping(timezone=zone), now=now, **writer)


def run(shop, now: dt.datetime, **options):
    regularizer = Regularizer(shop.engine, shop.schema, clock=lambda: now, sleeper=no_sleep)
    return regularizer.run(RunOptions(sleep=0, **options))


def grace_and_lookback_hold_to_the_minute(shop) -> None:
    """Orphans a minute either side of the grace period (10 min) and of the lookback (2 h)."""
    too_recent = shop.orphan(paid_minutes_ago=9)
    just_old_enough = shop.orphan(paid_minutes_ago=11)
    inside_lookback = shop.orphan(paid_minutes_ago=119)
    aged_out = shop.orphan(paid_minutes_ago=121)

    summary = run(shop, shop.now, min_age_minutes=10, lookback_hours=2)

    assert summary.found == 2
    assert summary.aged_out == 1
    assert summary.oldest_orphan_age_minutes == 119.0
    assert set(outbox_per_order(shop)) == {str(just_old_enough), str(inside_lookback)}
    assert shop.status_of(too_recent) == "pending"
    assert shop.status_of(aged_out) == "pending"
    assert shop.status_of(just_old_enough) == "completed"


@pytest.mark.parametrize("zone", ["Asia/Kolkata", NEW_YORK])
def test_naive_local_times_get_their_grace_period_and_lookback(engine, zone):
    grace_and_lookback_hold_to_the_minute(zoned_shop(engine, zone))


@pytest.mark.parametrize("zone", ["Asia/Kolkata", NEW_YORK])
def test_the_flip_writes_updated_at_in_the_shops_zone(engine, zone):
    shop = zoned_shop(engine, zone)
    order_id = shop.orphan(paid_minutes_ago=30)

    run(shop, NOW)

    orders = shop.tables.orders
    with engine.connect() as conn:
        written = conn.execute(sa.select(orders.c.updated_at).where(orders.c.id == order_id))
        assert written.scalar_one() == shop.at(NOW)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_timestamptz_columns_hold_whatever_the_mapping_zone(engine):
    shop = zoned_shop(engine, "Asia/Kolkata", time_type=sa.DateTime(timezone=True))
    assert ("transactions", "completed_at") in shop.schema.aware_columns

    grace_and_lookback_hold_to_the_minute(shop)

    with engine.connect() as conn:
        flipped_at = conn.execute(
            sa.select(sa.func.max(shop.tables.orders.c.updated_at)).where(
                shop.tables.orders.c.status == "completed"
            )
        ).scalar_one()
    assert flipped_at == NOW.replace(tzinfo=dt.UTC)


@pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)
def test_mariadb_timestamp_columns_are_read_in_the_shops_zone(engine):
    grace_and_lookback_hold_to_the_minute(
        zoned_shop(engine, NEW_YORK, time_type=mysql.TIMESTAMP(fsp=6))
    )


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_postgresql_session_zone_is_pinned_to_utc(db_url):
    name = sa.engine.make_url(db_url).database
    admin = create_app_engine(db_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f"ALTER DATABASE {name} SET TimeZone = 'Asia/Kolkata'"))
    try:
        engine = create_app_engine(db_url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SHOW TimeZone")).scalar_one() == "UTC"
        engine.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"ALTER DATABASE {name} RESET TimeZone"))
        admin.dispose()


# --- daylight saving: New York, 2026 ---------------------------------------------------------
# Autumn: 01:00-02:00 local happens twice on 1 November (05:00-06:00 UTC, then 06:00-07:00).
# Spring: 02:00-03:00 local never happens on 8 March (01:59 EST is followed by 03:00 EDT).


@pytest.mark.parametrize(
    ("paid_utc", "now_utc", "flipped"),
    [
        # paid 01:30 local, the second time round; five minutes later the wall clock says 01:35
        # and an hour-old first 01:30 would be read: the grace period must still hold
        (dt.datetime(2026, 11, 1, 6, 30), dt.datetime(2026, 11, 1, 6, 35), False),
        (dt.datetime(2026, 11, 1, 6, 30), dt.datetime(2026, 11, 1, 6, 41), True),
        # paid 01:30 local the first time round, read as the second: held an hour longer, never less
        (dt.datetime(2026, 11, 1, 5, 30), dt.datetime(2026, 11, 1, 5, 35), False),
        (dt.datetime(2026, 11, 1, 5, 30), dt.datetime(2026, 11, 1, 6, 41), True),
        # paid 01:55 EST, now 03:03 EDT: 68 minutes by the wall clock, 8 in fact
        (dt.datetime(2026, 3, 8, 6, 55), dt.datetime(2026, 3, 8, 7, 3), False),
        (dt.datetime(2026, 3, 8, 6, 55), dt.datetime(2026, 3, 8, 7, 6), True),
    ],
)
def test_daylight_saving_edges_keep_the_grace_period(engine, paid_utc, now_utc, flipped):
    shop = zoned_shop(engine, NEW_YORK, now=now_utc)
    order_id = shop.orphan(paid_minutes_ago=(now_utc - paid_utc).total_seconds() / 60)

    run(shop, now_utc, min_age_minutes=10)

    assert shop.status_of(order_id) == ("completed" if flipped else "pending")
    assert len(outbox_per_order(shop)) == int(flipped)


def test_a_wall_time_that_is_ambiguous_or_skipped_reads_as_its_latest_instant():
    zone = shop_zone(NEW_YORK)
    # 01:30 on 1 November 2026 is 05:30 or 06:30 UTC: the later one
    assert from_shop(dt.datetime(2026, 11, 1, 1, 30), zone) == dt.datetime(2026, 11, 1, 6, 30)
    # 02:30 on 8 March 2026 never happened: read with the offset before the jump, 07:30 UTC
    assert from_shop(dt.datetime(2026, 3, 8, 2, 30), zone) == dt.datetime(2026, 3, 8, 7, 30)
    assert from_shop(dt.datetime(2026, 6, 15, 17, 30), shop_zone("Asia/Kolkata")) == dt.datetime(
        2026, 6, 15, 12, 0
    )
    aware = dt.datetime(2026, 6, 15, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert from_shop(aware, zone) == dt.datetime(2026, 6, 15, 12, 0)


def test_an_unknown_zone_is_refused_naming_the_key():
    with pytest.raises(
        ConfigurationError,
        match=r"^invalid schema mapping: timezone: 'Asia/Calcutt' is not an IANA time zone name",
    ):
        SchemaMapping.parse({"timezone": "Asia/Calcutt"})
