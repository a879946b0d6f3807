"""The tracked inconsistencies: the same answer as a full scan, kept current by re-examining what changed."""

import datetime as dt
import threading
import time

import sqlalchemy as sa

from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.decisions.tracker import (
    FULL_SCAN_EVERY,
    SCAN_NAME,
    InconsistencyTracker,
)
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.detection.scans import (
    InconsistencyReport,
    inconsistency_report,
)
from tests.support.rows import owned
from tests.support.seeds import seed_inconsistencies


class Clock:
    def __init__(self, now: dt.datetime):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def tracker(shop, clock=None) -> InconsistencyTracker:
    return InconsistencyTracker(shop.engine, shop.schema, clock=clock or utcnow)


def full_scan(shop) -> InconsistencyReport:
    with shop.engine.connect() as conn:
        return inconsistency_report(conn, shop.schema, sample_size=None)


def scan_state(shop):
    st = owned(shop).scan_state
    with shop.engine.connect() as conn:
        return conn.execute(sa.select(st).where(st.c.name == SCAN_NAME)).one()


def stored(shop) -> dict[tuple[str, str], dt.datetime]:
    inc = owned(shop).inconsistencies
    with shop.engine.connect() as conn:
        return {(r.order_id, r.kind): r.first_seen_at for r in conn.execute(sa.select(inc))}


def set_status(shop, table: str, row_id, status: str) -> None:
    t = getattr(shop.tables, table)
    with shop.engine.begin() as conn:
        conn.execute(t.update().where(t.c.id == row_id).values(status=status))


def test_first_refresh_is_a_full_scan_and_matches_it_exactly(shop):
    expected = seed_inconsistencies(shop)
    shop.orphan()  # healthy: never reported
    clock = Clock(utcnow())

    report = tracker(shop, clock).refresh()

    assert (
        report.order_ids
        == full_scan(shop).order_ids
        == {kind: sorted(ids) for kind, ids in expected.items()}
    )
    assert report.counts == {kind: len(ids) for kind, ids in expected.items()}
    assert set(stored(shop)) == {(str(i), kind) for kind, ids in expected.items() for i in ids}
    state = scan_state(shop)
    assert state.scanned_at == state.full_scan_at == clock.now


def test_a_new_payment_is_seen_at_the_next_refresh_and_a_cleared_one_goes(shop):
    expected = seed_inconsistencies(shop)
    clock = Clock(utcnow())
    tracker(shop, clock).refresh()
    first_seen = stored(shop)

    clock.now += dt.timedelta(minutes=5)
    charged_twice = shop.order()
    shop.payment(charged_twice, completed_minutes_ago=2)
    shop.payment(charged_twice, completed_minutes_ago=1)
    (cancelled,) = expected[d.PAID_BUT_CLOSED]
    set_status(shop, "orders", cancelled, "completed")  # a human settled it

    report = tracker(shop, clock).refresh()

    assert report.order_ids[d.DOUBLE_CHARGE] == sorted([*expected[d.DOUBLE_CHARGE], charged_twice])
    assert report.order_ids[d.PAID_BUT_CLOSED] == []
    assert report.order_ids == full_scan(shop).order_ids
    now_stored = stored(shop)
    assert now_stored[(str(charged_twice), d.DOUBLE_CHARGE)] == clock.now
    for key, seen in now_stored.items():
        if key != (str(charged_twice), d.DOUBLE_CHARGE):
            assert seen == first_seen[key]  # still open: first seen when it was first seen
    state = scan_state(shop)
    assert state.scanned_at == clock.now and state.full_scan_at == clock.now - dt.timedelta(
        minutes=5
    )


def test_a_change_away_from_payments_waits_for_the_daily_full_scan(shop):
    """An order cancelled days after its payment is outside the incremental scope, by design."""
    paid_long_ago = shop.order(age_minutes=3 * 24 * 60)
    shop.payment(paid_long_ago, completed_minutes_ago=3 * 24 * 60)
    clock = Clock(utcnow())
    tracker(shop, clock).refresh()
    set_status(shop, "orders", paid_long_ago, "cancelled")

    clock.now += dt.timedelta(minutes=5)
    assert tracker(shop, clock).refresh().order_ids[d.PAID_BUT_CLOSED] == []
    assert full_scan(shop).order_ids[d.PAID_BUT_CLOSED] == [paid_long_ago]

    clock.now += FULL_SCAN_EVERY
    assert tracker(shop, clock).refresh().order_ids[d.PAID_BUT_CLOSED] == [paid_long_ago]
    assert scan_state(shop).full_scan_at == clock.now


def test_an_explicit_full_refresh_finds_a_deleted_order_at_once(shop):
    order_id = shop.order(age_minutes=3 * 24 * 60)
    shop.payment(order_id, completed_minutes_ago=3 * 24 * 60)
    clock = Clock(utcnow())
    tracker(shop, clock).refresh()
    with shop.engine.begin() as conn:
        conn.execute(shop.tables.orders.delete().where(shop.tables.orders.c.id == order_id))

    clock.now += dt.timedelta(minutes=5)
    assert tracker(shop, clock).refresh().order_ids[d.MISSING_ORDER] == []
    assert tracker(shop, clock).refresh(full=True).order_ids[d.MISSING_ORDER] == [order_id]


def test_concurrent_refreshes_serialize_and_agree(server_shop):
    expected = seed_inconsistencies(server_shop)
    reports, errors = [], []

    def refresh() -> None:
        try:
            reports.append(tracker(server_shop).refresh())
        except Exception as exc:  # a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=refresh) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert [r.order_ids for r in reports] == [
        {kind: sorted(ids) for kind, ids in expected.items()}
    ] * 4
    assert len(stored(server_shop)) == sum(len(ids) for ids in expected.values())


def test_a_scan_never_fails_on_another_holding_the_scan_state(server_shop, monkeypatch):
    """A concurrent check or run meets a long full scan: it waits a bounded time, then reports
    the last stored results and says so, instead of failing on a lock-wait timeout."""
    import regularization_pipeline.core.decisions.tracker as inconsistencies

    expected = seed_inconsistencies(server_shop)
    first = tracker(server_shop).refresh()  # stored
    monkeypatch.setattr(inconsistencies, "SCAN_LOCK_WAIT_SECONDS", 1.0)
    st = owned(server_shop).scan_state
    with server_shop.engine.connect() as long_scan:
        long_scan.execute(sa.select(st).where(st.c.name == SCAN_NAME).with_for_update()).one()
        began = time.monotonic()
        report = tracker(server_shop).refresh()
        waited = time.monotonic() - began
        long_scan.rollback()
    assert report.scan_skipped and not first.scan_skipped
    assert 1.0 <= waited < 5  # bounded, far inside MariaDB's 50 s lock-wait timeout
    assert report.order_ids == {kind: sorted(ids) for kind, ids in expected.items()}
