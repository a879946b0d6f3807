"""Detection on real databases: what is an orphan, what is inconsistent, and the scan window."""

import datetime as dt

import sqlalchemy as sa

from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.detection.scans import inconsistency_report
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.verdicts import INCONSISTENT, REGULARIZED
from tests.support.rows import (
    attempts_of,
    audit_of,
    audit_per_order,
    no_sleep,
    outbox_per_order,
    owned,
)
from tests.support.seeds import seed_inconsistencies

RUN = RunOptions(sleep=0)


def run(shop, **options):
    return Regularizer(shop.engine, shop.schema, sleeper=no_sleep).run(
        RunOptions(sleep=0, **options)
    )


def test_every_inconsistency_kind_is_reported_and_never_fixed(shop):
    expected = seed_inconsistencies(shop)
    healthy = shop.orphan()
    with shop.engine.connect() as conn:
        report = inconsistency_report(conn, shop.schema)
        stats = d.orphan_stats(conn, shop.schema, RUN.window(utcnow()))
    assert report.order_ids == {kind: sorted(ids) for kind, ids in expected.items()}
    assert report.counts == {kind: len(ids) for kind, ids in expected.items()}

    summary = run(shop)
    assert summary.regularized == 1
    assert summary.inconsistent_by_kind[d.INVALID_AMOUNT] == 3
    # An orphan is what the job would fix: the healthy one. The six other pending orders
    # with a completed payment are held, each under its kind, never counted as orphans.
    assert (stats.count, stats.sample_ids) == (1, (healthy,))
    assert summary.found == 1
    held = {reason: n for reason, n in summary.held.items() if n}
    assert held == {kind: len(ids) for kind, ids in expected.items() if ids}
    assert outbox_per_order(shop) == {str(healthy): 1}
    for kind, ids in expected.items():
        for order_id in ids:
            if kind != d.MISSING_ORDER:
                assert shop.status_of(order_id) != "completed", kind
    assert set(audit_per_order(shop, INCONSISTENT)) == {
        str(i) for ids in expected.values() for i in ids
    }


def test_standing_inconsistencies_are_audited_once_not_every_run(shop):
    expected = seed_inconsistencies(shop)
    both = shop.order(total="10.00", currency="EUR")  # two kinds at once on one payment
    shop.payment(both, amount="12.00", currency="GBP")
    for _ in range(3):
        run(shop)
    audited = audit_per_order(shop, INCONSISTENT)
    kinds_of = {str(i): 0 for ids in expected.values() for i in ids}
    for ids in expected.values():
        for i in ids:
            kinds_of[str(i)] += 1
    kinds_of[str(both)] = 2  # amount_mismatch and currency_mismatch, each audited once
    assert audited == kinds_of
    # The kind is the row's field (what the next run looks for), and the words agree with it.
    rows = _inconsistent_rows(shop)
    assert sorted((row.order_id, row.kind) for row in rows) == sorted(
        [(str(i), kind) for kind, ids in expected.items() for i in ids]
        + [(str(both), d.AMOUNT_MISMATCH), (str(both), d.CURRENCY_MISMATCH)]
    )
    assert all(row.reason.startswith(f"{row.kind}: reported, not fixed") for row in rows)
    assert attempts_of(shop, both).last_outcome == INCONSISTENT


def test_inconsistency_that_appears_later_is_audited_when_it_appears(shop):
    order_id = shop.order(total="10.00")
    shop.payment(order_id, amount="12.00")
    run(shop)
    shop.payment(order_id, amount="10.00", completed_minutes_ago=20)  # now also a double charge
    run(shop)
    run(shop)
    rows = [r for r in audit_of(shop, order_id) if r.action == INCONSISTENT]
    assert sorted(r.kind for r in rows) == [d.AMOUNT_MISMATCH, d.DOUBLE_CHARGE]


def _inconsistent_rows(shop):
    au = owned(shop).audit
    with shop.engine.connect() as conn:
        return conn.execute(sa.select(au).where(au.c.action == INCONSISTENT)).all()


def test_soft_deleted_orders_are_ignored(shop):
    deleted = shop.orphan(deleted=True)
    live = shop.orphan()
    summary = run(shop)
    assert summary.found == 1
    assert shop.status_of(deleted) == "pending"
    assert audit_per_order(shop, REGULARIZED) == {str(live): 1}
    assert str(deleted) not in outbox_per_order(shop)


def test_grace_period_leaves_recent_payments_to_their_webhook(shop):
    recent = shop.orphan(paid_minutes_ago=5)
    due = shop.orphan(paid_minutes_ago=15)
    summary = run(shop, min_age_minutes=10)
    assert (summary.found, summary.regularized) == (1, 1)
    assert (shop.status_of(recent), shop.status_of(due)) == ("pending", "completed")
    assert run(shop, min_age_minutes=0).regularized == 1
    assert shop.status_of(recent) == "completed"


def test_lookback_bounds_the_scan_and_counts_what_aged_out(shop):
    old = [shop.orphan(paid_minutes_ago=60 * 30), shop.orphan(paid_minutes_ago=60 * 50)]
    fresh = shop.orphan(paid_minutes_ago=60)
    summary = run(shop, lookback_hours=24)
    assert (summary.found, summary.aged_out, summary.regularized) == (1, 2, 1)
    assert [shop.status_of(i) for i in old] == ["pending", "pending"]
    assert shop.status_of(fresh) == "completed"
    assert str(old[0]) not in outbox_per_order(shop)
    # Without a bound nothing ages out and the old ones are regularized.
    summary = run(shop)
    assert (summary.aged_out, summary.regularized) == (0, 2)


def test_since_and_until_select_a_slice_of_payments(shop):
    now = utcnow()
    before = shop.orphan(paid_minutes_ago=60 * 10)
    inside = shop.orphan(paid_minutes_ago=60 * 5)
    after = shop.orphan(paid_minutes_ago=60 * 1)
    summary = run(shop, since=now - dt.timedelta(hours=7), until=now - dt.timedelta(hours=3))
    assert (summary.regularized, summary.aged_out) == (1, 1)
    assert [shop.status_of(i) for i in (before, inside, after)] == [
        "pending",
        "completed",
        "pending",
    ]


def test_candidate_pages_walk_every_regularizable_orphan_once(shop):
    ids = shop.orphans(7)
    bad = shop.order(total="1.00")
    shop.payment(bad, amount="2.00")
    pages = list(d.candidate_pages(shop.engine, shop.schema, RUN.window(utcnow()), page_size=3))
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == ids


def test_every_inconsistent_order_is_audited_not_only_the_first_hundred(shop):
    ids = shop.orphans(110)
    transactions = shop.tables.transactions
    with shop.engine.begin() as conn:
        conn.execute(transactions.update().values(amount="1.00"))  # every payment short
    summary = run(shop)
    assert (summary.regularized, summary.inconsistent_by_kind[d.AMOUNT_MISMATCH]) == (0, 110)
    assert audit_per_order(shop, INCONSISTENT) == {str(i): 1 for i in ids}
    run(shop)
    assert audit_per_order(shop, INCONSISTENT) == {str(i): 1 for i in ids}
