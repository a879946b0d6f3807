"""Per-order mode: an order that fails mid-write leaves the orders around it done once."""

import sqlalchemy as sa

from regularization_pipeline.core.decisions.context import Fault
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from tests.support.rows import audit_of, no_sleep, outbox_per_order


def test_an_order_that_fails_leaves_the_next_one_on_a_fresh_connection(shop):
    ids = shop.orphans(3)
    failing = ids[1]

    def crash(point, order_id):
        if point == "after_flip" and order_id == failing:
            raise Fault("crash after the flip")

    summary = Regularizer(shop.engine, shop.schema, sleeper=no_sleep, fault=crash).run(
        RunOptions(mode="per_order", sleep=0)
    )
    assert (summary.regularized, summary.failed) == (2, 1)
    assert outbox_per_order(shop) == {str(ids[0]): 1, str(ids[2]): 1}
    assert shop.status_of(failing) == "pending"
    assert [row.action for row in audit_of(shop, failing)] == ["failed"]


def _checkouts_of_a_run(shop, orders: int) -> int:
    shop.orphans(orders)
    checkouts = []
    listener = lambda *_args: checkouts.append(1)  # noqa: E731
    sa.event.listen(shop.engine.pool, "checkout", listener)
    try:
        summary = Regularizer(shop.engine, shop.schema, sleeper=no_sleep).run(
            RunOptions(mode="per_order", sleep=0)
        )
    finally:
        sa.event.remove(shop.engine.pool, "checkout", listener)
    assert summary.regularized == orders
    return len(checkouts)


def test_consecutive_orders_share_one_connection_so_more_orders_cost_no_more_checkouts(shop):
    # Each checkout is a pre-ping (and on return a reset): two round trips an order saves.
    assert _checkouts_of_a_run(shop, 8) == _checkouts_of_a_run(shop, 2)
