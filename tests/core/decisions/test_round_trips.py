"""Per-order mode's round trips: consecutive orders share one pooled connection, each order's
guarantees intact; a failed order's connection is not reused."""

import sqlalchemy as sa

from regularization_pipeline.core.decisions.context import Fault
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from tests.support.rows import audit_of, no_sleep, outbox_per_order


def _checkouts(engine: sa.Engine) -> list:
    seen: list = []
    sa.event.listen(engine.pool, "checkout", lambda *_args: seen.append(1))
    return seen


def test_consecutive_orders_share_one_connection_and_each_gets_its_event(shop):
    ids = shop.orphans(12)
    regularizer = Regularizer(shop.engine, shop.schema, sleeper=no_sleep)
    checkouts = _checkouts(shop.engine)
    summary = regularizer.run(RunOptions(mode="per_order", sleep=0))
    assert summary.regularized == 12
    assert outbox_per_order(shop) == {str(i): 1 for i in ids}
    # Before, each order took a connection from the pool (a pre-ping and a reset rollback
    # each): the run's own reads take a few, the twelve orders one between them.
    assert len(checkouts) < 12, len(checkouts)


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
