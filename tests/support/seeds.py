"""Shops seeded for a purpose: one inconsistency of each kind, events really written by a run."""

from __future__ import annotations

import sqlalchemy as sa

from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.tables import owned_tables


def seed_inconsistencies(shop) -> dict[str, list]:
    """One order (or orphan payment) per kind; the expected report, by kind."""
    amount = shop.order(total="49.90")
    shop.payment(amount, amount="45.00")
    currency = shop.order(currency="EUR")
    shop.payment(currency, currency="USD")
    null_amount = shop.order()
    shop.payment(null_amount, amount=None)
    null_total = shop.order(total=None)
    shop.payment(null_total)
    negative = shop.order(total="-49.90")
    shop.payment(negative, amount="-49.90")
    double = shop.order()
    shop.payment(double)
    shop.payment(double, completed_minutes_ago=30)
    cancelled = shop.order(status="cancelled")
    shop.payment(cancelled)
    with shop.engine.connect() as conn:
        ghost = conn.execute(sa.select(sa.func.max(shop.tables.orders.c.id))).scalar_one() + 1000
    shop.payment(ghost)
    undated = shop.order()
    shop.payment(undated, completed_minutes_ago=None)  # completed, completion time never written
    return {
        d.AMOUNT_MISMATCH: [amount],
        d.CURRENCY_MISMATCH: [currency],
        d.INVALID_AMOUNT: [null_amount, null_total, negative],
        d.DOUBLE_CHARGE: [double],
        d.PAID_BUT_CLOSED: [cancelled],
        d.MISSING_ORDER: [ghost],
        d.UNDATED_PAYMENT: [undated],
        d.PROVIDER_FAILED: [],
    }


def seed_events(shop, count: int) -> list:
    """Regularize ``count`` fresh orphans for real; returns their outbox rows (one event each)."""
    shop.orphans(count)
    summary = Regularizer(shop.engine, shop.schema, sleeper=lambda _s: None).run(
        RunOptions(sleep=0, limit=count)
    )
    assert summary.regularized == count
    ob = owned_tables(shop.mapping.table_prefix).outbox
    with shop.engine.connect() as conn:
        return conn.execute(sa.select(ob).order_by(ob.c.id)).all()
