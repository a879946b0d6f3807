"""One run, per order and in batches: crashes leave nothing behind, failures stay isolated and are
counted, quarantine and release, dry runs, limits, pacing, deadlines, and logs without personal data."""

import datetime as dt
import json
import logging
import time
from decimal import Decimal

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.decisions.context import Fault
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.verdicts import (
    DRY_RUN,
    FAILED,
    QUARANTINED,
    REGULARIZED,
    RELEASED,
    SKIPPED,
)
from tests.support.rows import attempts_of, audit_of, audit_per_order, no_sleep, outbox_per_order
from tests.support.rows import owned as owned_tables_of


@pytest.fixture(params=["per_order", "batched"])
def mode(request) -> str:
    """Both ways of running: every guarantee below must hold for batches as for single orders."""
    return request.param


def regularizer(shop, **kw) -> Regularizer:
    return Regularizer(shop.engine, shop.schema, sleeper=kw.pop("sleeper", no_sleep), **kw)


def fail_at(point: str, only=None):
    """A fault hook raising at ``point``, for every order or only for the order ``only``."""

    def hook(at: str, order_id) -> None:
        if at == point and (only is None or str(order_id) == str(only)):
            raise Fault(f"injected at {point}")

    return hook


def complete_behind_our_back(shop, order_id) -> None:
    """What the application's own webhook handler does when it finally arrives."""
    orders = shop.tables.orders
    with shop.engine.begin() as conn:
        conn.execute(orders.update().where(orders.c.id == order_id).values(status="completed"))


# --- bad options are refused before any database work -------------------------------------


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"sleep": -1}, "sleep"),
        ({"min_age_minutes": -5}, "min_age_minutes"),
        ({"lookback_hours": 0}, "lookback_hours"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_runtime_seconds": 0}, "max_runtime_seconds"),
        ({"since": dt.datetime(2026, 1, 2), "until": dt.datetime(2026, 1, 1)}, "since"),
        ({"since": dt.datetime(2026, 1, 1), "until": dt.datetime(2026, 1, 1)}, "since"),
        ({"colour": "red"}, "colour"),
        ({"limit": "many"}, "limit"),
    ],
)
def test_bad_run_options_are_refused_naming_the_field(values, field):
    with pytest.raises(ConfigurationError, match=f"invalid run options: .*{field}"):
        RunOptions.parse(**values)


def test_run_options_refuse_inverted_bounds_before_any_window_is_built():
    now = utcnow()
    with pytest.raises(ConfigurationError, match="since"):
        RunOptions.parse(since=now, until=now - dt.timedelta(hours=1))
    with pytest.raises(ConfigurationError, match="min_age_minutes"):
        RunOptions.parse(min_age_minutes=-1)


# --- a crash at any line leaves nothing behind -----------------------------------------------


@pytest.mark.parametrize("point", ["after_lock", "after_flip", "after_outbox", "before_commit"])
def test_crash_inside_the_order_transaction_leaves_nothing_behind(shop, point, mode):
    order_id = shop.orphan()
    summary = regularizer(shop, fault=fail_at(point)).run(RunOptions(mode=mode, sleep=0))
    assert (summary.failed, summary.regularized) == (1, 0)
    assert shop.status_of(order_id) == "pending"
    assert outbox_per_order(shop) == {}
    assert audit_per_order(shop, REGULARIZED) == {}
    assert [(r.action, r.attempt) for r in audit_of(shop, order_id)] == [(FAILED, 1)]
    assert f"injected at {point}" in audit_of(shop, order_id)[0].reason
    attempts = attempts_of(shop, order_id)
    assert (attempts.failures, attempts.last_outcome, attempts.quarantined_at) == (1, FAILED, None)

    # The next run, without the crash, does the work exactly once and clears the failure count.
    assert regularizer(shop).run(RunOptions(mode=mode, sleep=0)).regularized == 1
    assert shop.status_of(order_id) == "completed"
    assert outbox_per_order(shop) == {str(order_id): 1}
    assert attempts_of(shop, order_id).failures == 0


def test_one_failing_order_does_not_stop_the_others(shop, mode):
    ids = shop.orphans(5)
    bad = ids[1]
    summary = regularizer(shop, fault=fail_at("after_flip", only=bad)).run(
        RunOptions(mode=mode, sleep=0)
    )
    assert (summary.regularized, summary.failed) == (4, 1)
    assert {i: shop.status_of(i) for i in ids} == {
        i: ("pending" if i == bad else "completed") for i in ids
    }
    assert outbox_per_order(shop) == {str(i): 1 for i in ids if i != bad}


# --- quarantine and release ------------------------------------------------------------------


def test_order_that_keeps_failing_is_quarantined_then_released(shop, mode):
    bad, good = shop.orphans(2)
    failing = regularizer(shop, fault=fail_at("after_flip", only=bad))
    options = RunOptions(mode=mode, sleep=0, max_attempts=3)
    outcomes = [failing.run(options) for _ in range(3)]
    assert [(s.failed, s.quarantined) for s in outcomes] == [(1, 0), (1, 0), (0, 1)]
    assert [r.action for r in audit_of(shop, bad)] == [FAILED, FAILED, QUARANTINED]
    assert "quarantined after 3 failed attempt(s)" in audit_of(shop, bad)[-1].reason
    assert attempts_of(shop, bad).quarantined_at is not None

    # Quarantined: not retried by later runs, even ones that would succeed.
    later = regularizer(shop).run(options)
    assert later.processed == 0
    assert bad not in [o.order_id for o in later.outcomes]
    assert len(audit_of(shop, bad)) == 3
    assert (shop.status_of(bad), shop.status_of(good)) == ("pending", "completed")

    regularizer(shop).release(bad)
    released = attempts_of(shop, bad)
    assert (released.quarantined_at, released.failures) == (None, 0)
    assert audit_of(shop, bad)[-1].action == RELEASED
    assert regularizer(shop).run(options).regularized == 1
    assert shop.status_of(bad) == "completed"
    assert outbox_per_order(shop) == {str(bad): 1, str(good): 1}


def test_release_of_an_order_that_is_not_quarantined_is_refused(shop, mode):
    order_id = shop.orphan()
    with pytest.raises(ConfigurationError, match=f"order {order_id} is not quarantined"):
        regularizer(shop).release(order_id)
    regularizer(shop, fault=fail_at("after_flip")).run(
        RunOptions(mode=mode, sleep=0, max_attempts=5)
    )
    with pytest.raises(ConfigurationError, match="not quarantined"):
        regularizer(shop).release(order_id)  # failed once, not quarantined
    assert audit_per_order(shop, RELEASED) == {}


# --- a late webhook wins, deterministically -----------------------------------------------------


def test_late_webhook_between_scan_and_claim_is_left_alone(shop):
    late, other = shop.orphans(2)

    def webhook_arrives(point, order_id):
        if point == "before_claim" and order_id == late:
            complete_behind_our_back(shop, late)

    summary = regularizer(shop, fault=webhook_arrives).run(RunOptions(mode="per_order", sleep=0))
    assert (summary.regularized, summary.skipped) == (1, 1)
    skipped = next(o for o in summary.outcomes if o.order_id == late)
    assert (skipped.action, skipped.reason) == (
        SKIPPED,
        "order is already completed (its webhook arrived)",
    )
    assert outbox_per_order(shop) == {str(other): 1}
    assert [r.action for r in audit_of(shop, late)] == [SKIPPED]


def test_regularize_one_on_an_order_the_webhook_completed_writes_no_event(shop):
    order_id = shop.orphan()
    complete_behind_our_back(shop, order_id)
    outcome = regularizer(shop).regularize_one(order_id, "run-1", RunOptions(sleep=0))
    assert outcome.action == SKIPPED
    assert "already completed" in outcome.reason
    assert outbox_per_order(shop) == {}


def test_regularize_one_of_a_missing_order_is_skipped(shop):
    outcome = regularizer(shop).regularize_one(424242, "run-1", RunOptions(sleep=0))
    assert (outcome.action, outcome.reason) == (SKIPPED, "order not found")
    assert outbox_per_order(shop) == {}


# --- dry run, limit, pacing, deadline --------------------------------------------------------------


def test_dry_run_changes_no_order_and_writes_no_event(shop, mode):
    ids = shop.orphans(3)
    bad = shop.order(total="5.00")
    shop.payment(bad, amount="6.00")
    summary = regularizer(shop).run(RunOptions(mode=mode, sleep=0, dry_run=True))
    assert (summary.would_regularize, summary.regularized, summary.dry_run) == (3, 0, True)
    assert [shop.status_of(i) for i in ids] == ["pending"] * 3
    assert outbox_per_order(shop) == {}
    assert audit_per_order(shop, DRY_RUN) == {str(i): 1 for i in ids}
    assert audit_per_order(shop, REGULARIZED) == {}
    assert str(bad) not in audit_per_order(
        shop, "inconsistent"
    )  # a dry run records nothing as seen


def test_limit_is_respected(shop, mode):
    ids = shop.orphans(5)
    summary = regularizer(shop).run(RunOptions(mode=mode, sleep=0, limit=2, batch_size=2))
    assert (summary.processed, summary.regularized) == (2, 2)
    assert [shop.status_of(i) for i in ids] == ["completed"] * 2 + ["pending"] * 3
    assert len(outbox_per_order(shop)) == 2


def test_sleep_only_between_acted_orders_never_after_the_last(shop):
    shop.orphans(5)
    slept = []
    summary = regularizer(shop, sleeper=slept.append).run(RunOptions(sleep=1.5, limit=3))
    assert summary.regularized == 3
    assert slept == [1.5, 1.5]
    slept.clear()
    assert regularizer(shop, sleeper=slept.append).run(RunOptions(sleep=1.5)).regularized == 2
    assert slept == [1.5]
    slept.clear()
    regularizer(shop, sleeper=slept.append).run(RunOptions(sleep=1.5))  # nothing left to do
    assert slept == []


def test_deadline_stops_taking_new_orders(shop):
    ids = shop.orphans(6)

    def slow(point, _order_id):
        if point == "before_claim":
            time.sleep(0.4)

    # The deadline counts from the run's start, detection included: a second leaves
    # room for a slow first scan and still stops well before the sixth order.
    summary = regularizer(shop, fault=slow).run(
        RunOptions(mode="per_order", sleep=0, max_runtime_seconds=1.0)
    )
    assert summary.stopped_by_deadline
    assert 1 <= summary.regularized < len(ids)
    assert sum(shop.status_of(i) == "completed" for i in ids) == summary.regularized
    assert len(outbox_per_order(shop)) == summary.regularized


# --- logs carry ids, never personal data ----------------------------------------------------------------

PEOPLE = [
    ("Alice Wonderland", "alice.wonder@example.com"),
    ("Bob Builderson", "bob.builds@example.org"),
]


def test_logs_contain_ids_only(shop, caplog, mode):
    customers = shop.tables.customers
    with shop.engine.begin() as conn:
        conn.execute(
            customers.insert(),
            [{"id": i + 1, "name": n, "email": e} for i, (n, e) in enumerate(PEOPLE)],
        )
    good = shop.orphan(customer_id=1)
    failing = shop.orphan(customer_id=2)
    mismatch = shop.order(customer_id=1, total="3.00")
    shop.payment(mismatch, amount="4.00")

    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")  # statements and rows too
    summary = regularizer(shop, fault=fail_at("after_outbox", only=failing)).run(
        RunOptions(mode=mode, sleep=0)
    )
    assert (summary.regularized, summary.failed) == (1, 1)

    text = caplog.text
    assert f"order {good}: regularized" in text  # the run did log, by id
    assert f"order {failing}: failed" in text
    for name, email in PEOPLE:
        for secret in (name, email, email.split("@")[0]):
            assert secret not in text
    with shop.engine.connect() as conn:
        card = conn.execute(sa.select(shop.tables.transactions.c.card_last4)).scalars().first()
    assert f"'{card}'" not in text


def test_second_payment_arriving_before_the_claim_is_reported_not_fixed(shop):
    order_id = shop.orphan()

    def charge_again(point, oid):
        if point == "before_claim" and oid == order_id:
            shop.payment(order_id, completed_minutes_ago=30)

    summary = regularizer(shop, fault=charge_again).run(RunOptions(mode="per_order", sleep=0))
    assert (summary.inconsistent, summary.regularized) == (1, 0)
    assert shop.status_of(order_id) == "pending"
    assert outbox_per_order(shop) == {}
    [row] = audit_of(shop, order_id)
    assert (row.action, row.kind) == ("inconsistent", d.DOUBLE_CHARGE)
    assert row.reason.startswith(f"{d.DOUBLE_CHARGE}: ")
    assert attempts_of(shop, order_id).last_outcome == "inconsistent"


def test_outbox_row_carries_the_idempotency_key_and_the_payment(shop, mode):
    order_id = shop.order(total="12.30", currency="USD")
    tx_id = shop.payment(order_id, amount="12.30", currency="USD")
    summary = regularizer(shop).run(RunOptions(mode=mode, sleep=0), run_id="run-42")
    outbox = owned_tables_of(shop).outbox
    with shop.engine.connect() as conn:
        [row] = conn.execute(sa.select(outbox)).all()
    payload = json.loads(row.payload)
    assert (row.order_id, row.idempotency_key, row.state, row.run_id) == (
        str(order_id),
        f"order-completed:{order_id}",
        "pending",
        "run-42",
    )
    assert (payload["transaction_id"], payload["currency"], payload["type"]) == (
        str(tx_id),
        "USD",
        "OrderCompleted",
    )
    assert Decimal(payload["amount"]) == Decimal("12.30")
    assert summary.outcomes[0].transaction_id == tx_id


def test_batches_log_one_info_line_per_batch_and_orders_at_debug(shop, caplog):
    """Where python_logs manages our logger each line is an event-log write: a line per order
    would cost more than the orders on a large backlog."""
    ids = shop.orphans(7)
    caplog.set_level(logging.INFO, logger="regularization_pipeline")
    regularizer(shop).run(RunOptions(mode="batched", sleep=0, batch_size=3))
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert [m.split(": ", 1)[1] for m in info if "batch of" in m] == [
        f"batch of 3 up to order {ids[2]}: 3 regularized",
        f"batch of 3 up to order {ids[5]}: 3 regularized",
        f"batch of 1 up to order {ids[6]}: 1 regularized",
    ]
    assert not [m for m in info if m.startswith("order ")]


def test_audit_values_longer_than_their_columns_are_cut_not_fatal(shop):
    """A status or currency is the application's to choose: PostgreSQL would refuse the audit row."""
    from regularization_pipeline.core.decisions.audit import fit_to_columns

    audit = owned_tables_of(shop).audit
    fitted = fit_to_columns(
        audit, {"order_status": "s" * 100, "currency": "€" * 20, "reason": "r" * 600, "attempt": 3}
    )
    assert (
        len(fitted["order_status"]),
        len(fitted["currency"]),
        len(fitted["reason"]),
        fitted["attempt"],
    ) == (64, 16, 500, 3)
    with shop.engine.begin() as conn:  # and the database takes them
        conn.execute(
            audit.insert(),
            {
                **fitted,
                "run_id": "r",
                "order_id": "1",
                "action": "skipped",
                "created_at": dt.datetime(2026, 11, 25),
            },
        )


def test_batches_scan_past_pending_orders_that_are_not_orphans(shop):
    """Claims look for orphans within the next slice of pending orders; a slice without any
    (customers who have not paid yet) moves the scan on instead of ending the run."""
    unpaid = [shop.order() for _ in range(25)]  # pending, no payment: not orphans
    orphans = shop.orphans(5)
    summary = regularizer(shop).run(RunOptions(mode="batched", sleep=0, batch_size=2))
    assert summary.regularized == 5 and summary.failed == 0
    assert outbox_per_order(shop) == {str(i): 1 for i in orphans}
    assert {shop.status_of(i) for i in unpaid} == {"pending"}
