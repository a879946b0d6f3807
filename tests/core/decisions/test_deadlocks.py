"""A deadlock victim is tried again: the database rolled its transaction back whole."""

import threading

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.errors import is_deadlock
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from tests.support.rows import audit_of, no_sleep, outbox_per_order


def real_deadlock(engine: sa.Engine) -> sa.exc.DBAPIError:
    """Two sessions lock two rows in opposite order; returns the error the database gave its victim."""
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE deadlock_probe (id INT PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO deadlock_probe VALUES (1), (2)"))
    errors: list[sa.exc.DBAPIError] = []
    both_locked = threading.Barrier(2)

    def session(first: int, second: int) -> None:
        try:
            with engine.begin() as conn:
                conn.execute(
                    sa.text("SELECT id FROM deadlock_probe WHERE id = :i FOR UPDATE"), {"i": first}
                )
                both_locked.wait(timeout=10)
                conn.execute(
                    sa.text("SELECT id FROM deadlock_probe WHERE id = :i FOR UPDATE"), {"i": second}
                )
        except sa.exc.DBAPIError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=session, args=pair) for pair in ((1, 2), (2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(errors) == 1, "the database should abort exactly one of the two sessions"
    return errors[0]


def test_deadlock_victim_is_retried_and_the_order_done_once(server_shop):
    shop = server_shop
    deadlock = real_deadlock(shop.engine)
    assert is_deadlock(deadlock)
    ids = shop.orphans(3)
    victim, raised = ids[1], []

    def first_try_is_a_deadlock_victim(point, order_id):
        if point == "after_flip" and order_id == victim and not raised:
            raised.append(order_id)
            raise deadlock

    summary = Regularizer(
        shop.engine, shop.schema, sleeper=no_sleep, fault=first_try_is_a_deadlock_victim
    ).run(RunOptions(mode="per_order", sleep=0))
    assert raised == [victim]
    assert (summary.regularized, summary.failed) == (3, 0)
    assert outbox_per_order(shop) == {str(i): 1 for i in ids}
    assert [row.action for row in audit_of(shop, victim)] == ["regularized"]


def test_other_database_errors_are_not_retried(server_shop):
    shop = server_shop
    (order_id,) = shop.orphans(1)
    tries = []

    def lock_timeout(point, oid):
        if point == "after_lock":
            tries.append(oid)
            raise sa.exc.OperationalError("SELECT 1", {}, Exception("lock wait timeout"))

    summary = Regularizer(shop.engine, shop.schema, sleeper=no_sleep, fault=lock_timeout).run(
        RunOptions(mode="per_order", sleep=0)
    )
    assert (summary.failed, len(tries)) == (1, 1)
    assert shop.status_of(order_id) == "pending"


@pytest.mark.parametrize("error", [ValueError("not a database error")])
def test_is_deadlock_is_false_for_anything_else(error):
    assert not is_deadlock(sa.exc.OperationalError("SELECT 1", {}, error))
