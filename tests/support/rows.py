"""What the tests read back: real rows in our own tables and the shop's, counted per order or state.

One helper per question, so every test asks it the same way.
"""

from __future__ import annotations

import sqlalchemy as sa

from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.shop.tables import OwnedTables, owned_tables
from regularization_pipeline.core.verdicts import QUARANTINED


def no_sleep(_seconds: float) -> None:
    """Tests never wait: the rate-limit sleep is counted, not slept."""


class OutcomeLog(list):
    """Every outcome of a run, as its progress hook: the run's summary keeps a bounded sample only."""

    def __call__(self, outcome, _summary, _limit) -> None:
        self.append(outcome)


def owned(engine_or_shop=None, prefix: str = "regularization_") -> OwnedTables:
    """Our tables, under the shop's mapping prefix when given a shop."""
    mapping = getattr(engine_or_shop, "mapping", None)
    return owned_tables(getattr(mapping, "table_prefix", prefix))


def _engine(engine_or_shop) -> sa.Engine:
    return getattr(engine_or_shop, "engine", engine_or_shop)


def outbox_per_order(engine_or_shop, key=str) -> dict:
    """How many OrderCompleted outbox rows each order has, by order id (as ``key`` makes it)."""
    ob = owned(engine_or_shop).outbox
    with _engine(engine_or_shop).connect() as conn:
        rows = conn.execute(sa.select(ob.c.order_id, sa.func.count()).group_by(ob.c.order_id)).all()
    return {key(order_id): n for order_id, n in rows}


def outbox_states(engine_or_shop) -> dict[str, int]:
    """How many outbox rows are in each state (pending, delivered, dead)."""
    ob = owned(engine_or_shop).outbox
    with _engine(engine_or_shop).connect() as conn:
        return dict(conn.execute(sa.select(ob.c.state, sa.func.count()).group_by(ob.c.state)).all())


def outbox_rows(engine_or_shop, prefix: str = "regularization_") -> list:
    """Every outbox row, oldest first."""
    ob = owned(engine_or_shop, prefix).outbox
    with _engine(engine_or_shop).connect() as conn:
        return conn.execute(sa.select(ob).order_by(ob.c.id)).all()


def deliveries(engine_or_shop, prefix: str = "regularization_") -> set[tuple[str, str]]:
    """(event id, publisher) pairs recorded as delivered."""
    dl = owned(engine_or_shop, prefix).deliveries
    with _engine(engine_or_shop).connect() as conn:
        return {(r.event_id, r.publisher) for r in conn.execute(sa.select(dl))}


def audit_per_order(engine_or_shop, action: str) -> dict[str, int]:
    """How many audit rows of ``action`` each order has."""
    au = owned(engine_or_shop).audit
    with _engine(engine_or_shop).connect() as conn:
        rows = conn.execute(
            sa.select(au.c.order_id, sa.func.count())
            .where(au.c.action == action)
            .group_by(au.c.order_id)
        ).all()
    return {order_id: n for order_id, n in rows}


def audit_actions(engine_or_shop, run_id: str) -> dict[str, int]:
    """How many audit rows of each action one run wrote."""
    au = owned(engine_or_shop).audit
    with _engine(engine_or_shop).connect() as conn:
        return dict(
            conn.execute(
                sa.select(au.c.action, sa.func.count())
                .where(au.c.run_id == run_id)
                .group_by(au.c.action)
            ).all()
        )


def audit_rows(engine_or_shop) -> list:
    """Every audit row, oldest first."""
    au = owned(engine_or_shop).audit
    with _engine(engine_or_shop).connect() as conn:
        return conn.execute(sa.select(au).order_by(au.c.id)).all()


def audit_of(engine_or_shop, order_id) -> list:
    """The audit rows of one order, oldest first."""
    au = owned(engine_or_shop).audit
    with _engine(engine_or_shop).connect() as conn:
        return conn.execute(
            sa.select(au).where(au.c.order_id == str(order_id)).order_by(au.c.id)
        ).all()


def attempts_of(engine_or_shop, order_id):
    """The order's attempts row (failures, quarantine), or None."""
    at = owned(engine_or_shop).attempts
    with _engine(engine_or_shop).connect() as conn:
        return conn.execute(sa.select(at).where(at.c.order_id == str(order_id))).first()


def completed_ids(shop) -> set[int]:
    """The shop's orders in status completed."""
    orders = shop.tables.orders
    with shop.engine.connect() as conn:
        return set(
            conn.execute(sa.select(orders.c.id).where(orders.c.status == "completed")).scalars()
        )


def assert_flip_iff_event(shop) -> None:
    """Never half-written: an order is completed by us exactly when it has one outbox row."""
    events = outbox_per_order(shop, key=int)
    assert set(events.values()) <= {1}, "an order has two OrderCompleted events"
    done = completed_ids(shop)
    assert done - set(events) == set(), "completed without an event"
    assert set(events) - done == set(), "an event for an order that is not completed"


def quarantine(shop, order_id) -> None:
    """Hold an order as five failed runs would have: quarantined, so no run takes it."""
    with shop.engine.begin() as conn:
        conn.execute(
            owned(shop)
            .attempts.insert()
            .values(
                order_id=str(order_id),
                failures=5,
                total_attempts=5,
                last_outcome=QUARANTINED,
                quarantined_at=utcnow(),
                updated_at=utcnow(),
            )
        )
