"""The operator tools (CLI commands and the UI's ops jobs) on real SQLite, PostgreSQL and MariaDB databases.

The CLI's ``main`` runs in-process against the database named by
REGULARIZATION_DATABASE_URL; bad input must exit 2 with a message naming the
problem and leave every row as it was.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest
import sqlalchemy as sa

from regularization_pipeline import cli
from regularization_pipeline.core import verdicts
from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.defs import operator_jobs
from tests.support.dagster import resources
from tests.support.http_stubs import ReceivingApp
from tests.support.processes import table_value
from tests.support.rows import attempts_of, audit_of, outbox_per_order, owned
from tests.support.rows import quarantine as _quarantine
from tests.support.seeds import seed_events

SECRET = "a-webhook-secret-for-tests-only"


@pytest.fixture
def run_cli(db_url, monkeypatch, capsys):
    """main(argv) -> (exit code, stdout, stderr), with SystemExit from argparse turned into its code."""
    monkeypatch.setenv("REGULARIZATION_DATABASE_URL", db_url)
    for name in ("REGULARIZATION_SCHEMA_FILE", "REGULARIZATION_PROVIDER_URL"):
        monkeypatch.delenv(name, raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def snapshot(shop) -> dict:
    """Every row of the shop and of our tables: what "nothing changed" compares."""
    names = ["orders", "transactions", *(t.name for t in owned(shop).metadata.sorted_tables)]
    with shop.engine.connect() as conn:
        return {
            name: sorted(map(tuple, conn.execute(sa.text(f"SELECT * FROM {name}")).all()), key=repr)
            for name in names
        }


# --- regularize-order ------------------------------------------------------------------


def test_regularize_order_completes_one_orphan_with_one_event_and_one_audit_row(shop, run_cli):
    target, other = shop.orphans(2)

    code, out, _err = run_cli("regularize-order", "--order-id", str(target))

    assert code == 0, out
    assert f"order {target}: regularized" in out
    assert (shop.status_of(target), shop.status_of(other)) == ("completed", "pending")
    assert outbox_per_order(shop) == {str(target): 1}
    assert [row.action for row in audit_of(shop, target)] == [verdicts.REGULARIZED]
    assert audit_of(shop, target)[0].run_id.startswith("operator-")


def _completed(shop):
    """An order its webhook already completed."""
    order_id = shop.orphan()
    with shop.engine.begin() as conn:
        conn.execute(
            shop.tables.orders.update()
            .where(shop.tables.orders.c.id == order_id)
            .values(status="completed")
        )
    return order_id


def _paid_but_cancelled(shop):
    order_id = shop.order(status="cancelled")
    shop.payment(order_id)
    return order_id


@pytest.mark.parametrize(
    ("make_order", "message"),
    [
        (lambda shop: 999_999, "order 999999 does not exist"),
        (_completed, "is not an orphan (order is already completed"),
        (lambda shop: shop.order(), "is not an orphan (order has no completed transaction"),
        (
            lambda shop: shop.orphan(paid_minutes_ago=2),
            "is not an orphan (payment is within the grace period",
        ),
        # Paid but cancelled: do-not-touch, said as such (not "no completed payment").
        (
            _paid_but_cancelled,
            "is not an orphan (paid_but_cancelled: order is 'cancelled'",
        ),
    ],
    ids=["unknown", "already-completed", "unpaid", "within-grace", "paid-but-cancelled"],
)
def test_regularize_order_refuses_what_is_not_an_orphan_and_changes_nothing(
    shop, run_cli, make_order, message
):
    shop.orphan()  # a real orphan that must stay untouched too
    order_id = make_order(shop)
    before = snapshot(shop)

    code, _out, err = run_cli("regularize-order", "--order-id", str(order_id))

    assert code == 2
    assert message in err
    assert snapshot(shop) == before


def test_regularize_order_refuses_a_non_numeric_id_for_an_integer_key(shop, run_cli):
    before = snapshot(shop)
    code, _out, err = run_cli("regularize-order", "--order-id", "abc")
    assert code == 2
    assert "order abc does not exist" in err
    assert snapshot(shop) == before


@pytest.mark.parametrize(
    "text",
    ["1O", "1,2", "1 OR 1=1", " 1;", "1e0", "+1", "0x1"]
    # exact ids (issue 25): before, each of these acted on order 1 with exit 0
    + ["1\n", " 1", "1 ", "01", "001", "\u20071", "1\u00a0", "\uff11", "\u0661"],
)
def test_an_id_that_only_resembles_order_1_acts_on_nothing(shop, run_cli, text):
    # MySQL-family servers compare '1O' with an integer key as the number 1: the id is
    # parsed against the key's type before any query, on every database.
    first = shop.orphan()
    assert first == 1
    _quarantine(shop, first)
    before = snapshot(shop)
    for command in ("regularize-order", "release"):
        code, _out, err = run_cli(command, "--order-id", text)
        assert code == 2, (command, err)
        shown = text if text.isprintable() and text == text.strip() else repr(text)
        assert err.splitlines() == [f"error: order {shown} does not exist"]
    assert snapshot(shop) == before


def test_a_64_bit_order_id_is_found_and_one_beyond_the_range_is_not(shop, run_cli):
    if shop.engine.dialect.name == "sqlite":
        big = 2**63 - 1
    else:  # the demo shop's key is BIGINT on the servers
        big = 1234567890123456789
    order_id = shop.order()
    with shop.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE orders SET id = :big WHERE id = :id"), {"big": big, "id": order_id}
        )
    code, _out, err = run_cli("regularize-order", "--order-id", str(big))
    assert "does not exist" not in err and code in (0, 2), err
    code, _out, err = run_cli("regularize-order", "--order-id", str(2**64))
    assert (code, err) == (2, f"error: order {2**64} does not exist\n")


# --- release -----------------------------------------------------------------------------


def test_regularize_order_refuses_a_quarantined_order_until_it_is_released(shop, run_cli):
    order_id = shop.orphan()
    _quarantine(shop, order_id)
    before = snapshot(shop)

    code, _out, err = run_cli("regularize-order", "--order-id", str(order_id))

    assert code == 2
    assert (
        f"order {order_id} is quarantined (last: " in err
        and f"release --order-id {order_id}" in err
    )
    assert snapshot(shop) == before
    assert run_cli("release", "--order-id", str(order_id))[0] == 0
    assert run_cli("regularize-order", "--order-id", str(order_id))[0] == 0
    assert shop.status_of(order_id) == "completed"


def test_release_lifts_the_quarantine_and_audits_it(shop, run_cli):
    order_id = shop.orphan()
    _quarantine(shop, order_id)

    code, out, _err = run_cli("release", "--order-id", str(order_id))

    assert code == 0
    assert f"order {order_id}: released" in out
    row = attempts_of(shop, order_id)
    assert (row.quarantined_at, row.failures, row.last_outcome) == (None, 0, verdicts.RELEASED)
    assert [a.action for a in audit_of(shop, order_id)] == [verdicts.RELEASED]


@pytest.mark.parametrize(
    ("order", "message"), [("unknown", "does not exist"), ("free", "is not quarantined")]
)
def test_release_refuses_an_unknown_or_free_order_and_changes_nothing(
    shop, run_cli, order, message
):
    quarantined = shop.orphan()
    _quarantine(shop, quarantined)
    target = 424_242 if order == "unknown" else shop.orphan()
    before = snapshot(shop)

    code, _out, err = run_cli("release", "--order-id", str(target))

    assert code == 2
    assert message in err
    assert snapshot(shop) == before


# --- list-orphans and list-inconsistencies ------------------------------------------------


def test_list_orphans_filters_by_time_and_writes_csv_without_changing_anything(shop, run_cli):
    recent = shop.orphan(paid_minutes_ago=60)
    old = shop.orphan(paid_minutes_ago=60 * 30)
    shop.orphan(paid_minutes_ago=3)  # inside the grace period: not an orphan yet
    before = snapshot(shop)
    since = (utcnow() - dt.timedelta(hours=24)).isoformat()

    code, everything, _ = run_cli("list-orphans", "--format", "csv")
    assert code == 0
    lines = everything.strip().splitlines()
    assert (
        lines[0]
        == "order_id,order_status,transaction_id,payment_reference,completed_at_utc,age_minutes"
    )
    assert [line.split(",")[0] for line in lines[1:]] == [
        str(old),
        str(recent),
    ]  # oldest payment first

    assert [
        ln.split(",")[0]
        for ln in run_cli("list-orphans", "--format", "csv", "--since", since)[1].splitlines()[1:]
    ] == [str(recent)]
    assert [
        ln.split(",")[0]
        for ln in run_cli("list-orphans", "--format", "csv", "--until", since)[1].splitlines()[1:]
    ] == [str(old)]
    assert [
        ln.split(",")[0]
        for ln in run_cli("list-orphans", "--format", "csv", "--hours", "2")[1].splitlines()[1:]
    ] == [str(recent)]
    code, table, err = run_cli("list-orphans")
    assert code == 0 and table.splitlines()[0].split() == [
        "order_id",
        "order_status",
        "transaction_id",
        "payment_reference",
        "completed_at_utc",
        "age_minutes",
    ]
    assert "2 orphaned order(s)" in err
    assert snapshot(shop) == before


@pytest.mark.parametrize("flag", ["--since", "--until"])
def test_a_malformed_time_is_a_usage_error_naming_the_flag(shop, run_cli, flag):
    shop.orphan()
    before = snapshot(shop)
    for command in (["list-orphans"], ["list-inconsistencies"], ["redeliver", "--all-dead"]):
        code, _out, err = run_cli(*command, flag, "2024-13-45")
        assert code == 2
        assert f"argument {flag}: '2024-13-45' is not an ISO 8601 time" in err
    assert snapshot(shop) == before


def test_since_after_until_is_a_usage_error(shop, run_cli):
    code, _out, err = run_cli("list-orphans", "--since", "2024-05-02", "--until", "2024-05-01")
    assert code == 2
    assert "since must be earlier than until" in err


def test_list_inconsistencies_names_each_kind_and_order(shop, run_cli):
    mismatch = shop.orphan(amount="10.00")
    with shop.engine.begin() as conn:
        conn.execute(
            shop.tables.orders.update()
            .where(shop.tables.orders.c.id == mismatch)
            .values(total="12.00")
        )
    double = shop.orphan()
    shop.payment(double)
    shop.orphan()  # consistent
    before = snapshot(shop)

    code, out, _err = run_cli("list-inconsistencies", "--format", "csv")

    assert code == 0
    # The kinds and orders; the figures are test_settling's.
    assert sorted(line.split(",")[:2] for line in out.strip().splitlines()[1:]) == sorted(
        [
            ["amount_mismatch", str(mismatch)],
            ["double_charge", str(double)],
            ["double_charge", str(double)],
        ]
    )
    since = (utcnow() + dt.timedelta(minutes=1)).isoformat()
    assert run_cli("list-inconsistencies", "--format", "csv", "--since", since)[1].strip() == (
        "kind,order_id,order_status,order_total,order_currency,transaction_id,amount,currency,"
        "completed_at_utc"
    )
    assert snapshot(shop) == before


# --- redeliver -----------------------------------------------------------------------------


def _kill(shop, event_ids, created_days_ago: float = 0) -> None:
    ob = owned(shop).outbox
    created = utcnow() - dt.timedelta(days=created_days_ago)
    with shop.engine.begin() as conn:
        conn.execute(
            ob.update()
            .where(ob.c.event_id.in_(event_ids))
            .values(
                state=tb.DEAD, attempts=8, last_error="PermanentDeliveryError", created_at=created
            )
        )


def _states(shop) -> dict[str, str]:
    ob = owned(shop).outbox
    with shop.engine.connect() as conn:
        return dict(conn.execute(sa.select(ob.c.event_id, ob.c.state)).all())


def test_redeliver_named_dead_events_puts_them_back_in_the_queue(shop, run_cli):
    first, second, third = (row.event_id for row in seed_events(shop, 3))
    _kill(shop, [first, second])

    code, out, _err = run_cli("redeliver", "--event-id", first)

    assert code == 0
    assert "1 dead event(s) back in the queue" in out
    assert _states(shop) == {first: tb.PENDING, second: tb.DEAD, third: tb.PENDING}


@pytest.mark.parametrize("which", ["unknown", "not-dead"])
def test_redeliver_refuses_unknown_or_live_events_and_changes_nothing(shop, run_cli, which):
    first, second = (row.event_id for row in seed_events(shop, 2))
    _kill(shop, [first])
    other = "00000000-0000-0000-0000-000000000000" if which == "unknown" else second
    before = snapshot(shop)

    code, _out, err = run_cli("redeliver", "--event-id", first, other)

    assert code == 2
    assert (
        f"unknown event id(s): {other}"
        if which == "unknown"
        else f"not dead-lettered: {other} (pending)"
    ) in err
    assert snapshot(shop) == before


def test_redeliver_all_dead_within_a_time_range(shop, run_cli):
    old, recent, live = (row.event_id for row in seed_events(shop, 3))
    _kill(shop, [old], created_days_ago=10)
    _kill(shop, [recent], created_days_ago=1)

    code, out, _err = run_cli(
        "redeliver", "--all-dead", "--since", (utcnow() - dt.timedelta(days=3)).isoformat()
    )

    assert code == 0 and "1 dead event(s)" in out
    assert _states(shop) == {old: tb.DEAD, recent: tb.PENDING, live: tb.PENDING}
    assert run_cli("redeliver", "--all-dead")[0] == 0
    assert set(_states(shop).values()) == {tb.PENDING}


@pytest.fixture
def webhook_env(monkeypatch):
    """A real receiver, named to the CLI through the variables the jobs read."""
    with ReceivingApp(secret=SECRET) as receiver:
        monkeypatch.setenv("REGULARIZATION_PUBLISHERS", "webhook")
        monkeypatch.setenv("REGULARIZATION_WEBHOOK_URL", receiver.url + "/hooks")
        monkeypatch.setenv("REGULARIZATION_WEBHOOK_SECRET", SECRET)
        yield receiver


def test_deliver_delivers_what_waits_in_the_outbox_once_and_says_how_many(
    shop, run_cli, webhook_env
):
    rows = seed_events(shop, 2)

    code, out, _err = run_cli("deliver")
    again, out_again, _ = run_cli("deliver")

    assert (code, again) == (0, 0), out
    assert "events: to webhook" in out and ": 2 of 2 event(s) delivered, 0 dead-lettered" in out
    assert out_again.strip().endswith(": no event was due"), out_again
    assert webhook_env.accepted_per_key() == {row.idempotency_key: 1 for row in rows}
    assert set(_states(shop).values()) == {tb.DELIVERED}


def test_redeliver_delivers_the_dead_events_at_once(shop, run_cli, webhook_env):
    dead, live = seed_events(shop, 2)
    _kill(shop, [dead.event_id])

    code, out, _err = run_cli("redeliver", "--event-id", dead.event_id)

    assert code == 0, out
    assert "1 dead event(s) back in the queue" in out
    assert webhook_env.accepted_per_key() == {dead.idempotency_key: 1, live.idempotency_key: 1}
    assert set(_states(shop).values()) == {tb.DELIVERED}


def test_redeliver_with_a_bad_publisher_setting_changes_nothing(shop, run_cli, monkeypatch):
    (dead,) = seed_events(shop, 1)
    _kill(shop, [dead.event_id])
    monkeypatch.setenv("REGULARIZATION_PUBLISHERS", "webhook")  # no URL, no secret
    before = snapshot(shop)

    code, _out, err = run_cli("redeliver", "--all-dead")

    assert code == 2 and "webhook_url" in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(shop) == before


# --- prune ---------------------------------------------------------------------------------


def _age_everything(shop, days: float) -> None:
    """Move every audit row and outbox event `days` into the past."""
    t = owned(shop)
    when = utcnow() - dt.timedelta(days=days)
    with shop.engine.begin() as conn:
        conn.execute(t.audit.update().values(created_at=when))
        conn.execute(t.outbox.update().values(created_at=when, updated_at=when))


def _count(shop, table) -> int:
    with shop.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def test_prune_deletes_old_settled_history_and_keeps_pending_events_recent_rows_and_inconsistency_reports(
    shop, run_cli
):
    t = owned(shop)
    delivered, dead, pending = (row.event_id for row in seed_events(shop, 3))
    with shop.engine.begin() as conn:
        conn.execute(
            t.outbox.update()
            .where(t.outbox.c.event_id == delivered)
            .values(state=tb.DELIVERED, delivered_at=utcnow())
        )
        conn.execute(
            t.deliveries.insert().values(
                event_id=delivered, publisher="python:demo", delivered_at=utcnow()
            )
        )
    _kill(shop, [dead])
    double = shop.orphan()
    shop.payment(double)
    assert (
        run_cli("regularize-order", "--order-id", str(shop.orphan()))[0] == 0
    )  # one more event, written now
    _age_everything(shop, 100)
    fresh = shop.orphan()
    assert (
        run_cli("regularize-order", "--order-id", str(fresh))[0] == 0
    )  # a recent audit row and event
    with (
        shop.engine.begin() as conn
    ):  # an inconsistency report, old: the memory of what was reported
        conn.execute(
            t.audit.insert().values(
                run_id="r",
                order_id=str(double),
                action=verdicts.INCONSISTENT,
                reason="double_charge: reported, not fixed",
                attempt=0,
                created_at=utcnow() - dt.timedelta(days=200),
            )
        )
    audit_before = _count(shop, t.audit)

    code, out, _err = run_cli("prune", "--older-than-days", "90", "--dry-run")
    assert code == 0 and "would prune" in out
    assert table_value(out, "pruned_audit_rows") == str(audit_before - 2)
    assert _count(shop, t.audit) == audit_before  # a dry run deletes nothing

    code, out, _err = run_cli("prune", "--older-than-days", "90")

    assert code == 0
    assert _count(shop, t.audit) == 2  # the fresh regularization and the old inconsistency report
    states = _states(shop)
    assert delivered not in states and dead not in states
    assert states[pending] == tb.PENDING  # never pruned, however old
    assert sorted(states.values()) == [
        tb.PENDING,
        tb.PENDING,
        tb.PENDING,
    ]  # + the old pending one and the fresh one
    assert _count(shop, t.deliveries) == 0


def test_prune_refuses_a_retention_under_a_day(shop, run_cli):
    seed_events(shop, 1)
    _age_everything(shop, 5)
    before = snapshot(shop)
    code, _out, err = run_cli("prune", "--older-than-days", "0")
    assert code == 2
    assert "--older-than-days must be a number from 1 to 36500, got 0" in err
    assert snapshot(shop) == before


# --- the same tools as jobs in the UI -------------------------------------------------------


def test_regularize_one_order_job_completes_the_orphan_and_fails_clearly_on_an_unknown_one(
    shop, db_url
):
    order_id = shop.orphan()
    with dg.instance_for_test() as instance:
        bad = operator_jobs.regularize_one_order.execute_in_process(
            run_config={"ops": {"regularize_named_order": {"config": {"order_id": "777777"}}}},
            resources=resources(db_url),
            instance=instance,
            raise_on_error=False,
        )
        assert not bad.success
        (failure,) = bad.get_step_failure_events()
        assert (
            failure.step_failure_data.user_failure_data.description == "order 777777 does not exist"
        )
        assert shop.status_of(order_id) == "pending"

        good = operator_jobs.regularize_one_order.execute_in_process(
            run_config={"ops": {"regularize_named_order": {"config": {"order_id": str(order_id)}}}},
            resources=resources(db_url),
            instance=instance,
        )
    assert good.success
    assert shop.status_of(order_id) == "completed"
    assert outbox_per_order(shop) == {str(order_id): 1}


def _run_job(job, op: str, config: dict, db_url: str, instance):
    return job.execute_in_process(
        run_config={"ops": {op: {"config": config}}},
        resources=resources(db_url),
        instance=instance,
        raise_on_error=False,
    )


def _failure(result) -> str:
    (failure,) = result.get_step_failure_events()
    return failure.step_failure_data.user_failure_data.description


def test_release_job_lifts_a_quarantine_and_refuses_a_free_order_changing_nothing(shop, db_url):
    held, free = shop.orphan(), shop.orphan()
    _quarantine(shop, held)
    before = snapshot(shop)
    with dg.instance_for_test() as instance:
        bad = _run_job(
            operator_jobs.release_quarantined_order,
            "release_order",
            {"order_id": str(free)},
            db_url,
            instance,
        )
        assert not bad.success and _failure(bad) == f"order {free} is not quarantined"
        assert snapshot(shop) == before
        good = _run_job(
            operator_jobs.release_quarantined_order,
            "release_order",
            {"order_id": str(held)},
            db_url,
            instance,
        )
    assert good.success
    assert attempts_of(shop, held).quarantined_at is None
    assert [a.action for a in audit_of(shop, held)] == [verdicts.RELEASED]


def test_redeliver_job_requeues_dead_events_and_refuses_a_malformed_time_changing_nothing(
    shop, db_url
):
    dead, live = (row.event_id for row in seed_events(shop, 2))
    _kill(shop, [dead])
    before = snapshot(shop)
    with dg.instance_for_test() as instance:
        bad = _run_job(
            operator_jobs.redeliver_dead_events,
            "redeliver_events",
            {"all_dead": True, "since": "yesterday"},
            db_url,
            instance,
        )
        assert not bad.success and _failure(bad) == "since: 'yesterday' is not an ISO 8601 time"
        assert snapshot(shop) == before
        good = _run_job(
            operator_jobs.redeliver_dead_events,
            "redeliver_events",
            {"event_ids": [dead]},
            db_url,
            instance,
        )
    assert good.success
    assert _states(shop) == {dead: tb.PENDING, live: tb.PENDING}


def test_prune_job_counts_in_a_dry_run_prunes_for_real_and_refuses_a_short_retention(shop, db_url):
    delivered, pending = (row.event_id for row in seed_events(shop, 2))
    t = owned(shop)
    with shop.engine.begin() as conn:
        conn.execute(
            t.outbox.update()
            .where(t.outbox.c.event_id == delivered)
            .values(state=tb.DELIVERED, delivered_at=utcnow())
        )
    _age_everything(shop, 100)
    before = snapshot(shop)
    with dg.instance_for_test() as instance:
        short = _run_job(
            operator_jobs.prune_history,
            "prune_old_history",
            {"older_than_days": 0.5},
            db_url,
            instance,
        )
        assert not short.success and "older_than_days" in _failure(short)
        dry = _run_job(
            operator_jobs.prune_history, "prune_old_history", {"dry_run": True}, db_url, instance
        )
        assert dry.success and snapshot(shop) == before
        real = _run_job(operator_jobs.prune_history, "prune_old_history", {}, db_url, instance)
    assert real.success
    assert _states(shop) == {
        pending: tb.PENDING
    }  # the settled event went, the pending one never does
