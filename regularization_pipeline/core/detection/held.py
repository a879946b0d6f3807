"""Held orders: pending orders with a completed payment that the job leaves alone by design,
for a human. Two reasons make an order held: an open inconsistency of one of
``INCONSISTENCY_KINDS`` (amount or currency mismatch, double charge, paid but cancelled, the
provider said failed), or a quarantine after repeated failures. Held orders are never counted
as orphans to fix.

One meaning, asked three ways, each by the place that needs it:

- :func:`held_orders` (counts by reason, from a live inconsistency report): the run's and the
  checks' ``held_orders_<reason>`` metadata;
- :func:`held_order_ids` (ids by reason, from the inconsistencies the tracker keeps open): the
  held-orders alert, which must name the orders without scanning the shop every minute;
- :func:`held_in_window` (a count within one scan window): what the audit says a run left.
"""

from __future__ import annotations

import sqlalchemy as sa

from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.detection.orphans import INCONSISTENCY_KINDS, PROVIDER_FAILED
from regularization_pipeline.core.detection.scans import (
    InconsistencyReport,
    pending_among,
)
from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.core.shop.binding import AppSchema
from regularization_pipeline.core.verdicts import QUARANTINED


def quarantined_order_ids(conn: sa.Connection, schema: AppSchema) -> list:
    """Pending orders quarantined after repeated failures (the provider's holds are a kind of their own)."""
    at = tb.owned_tables(schema.mapping.table_prefix).attempts
    keys = conn.execute(
        sa.select(at.c.order_id).where(
            at.c.quarantined_at.is_not(None),
            sa.or_(at.c.hold_kind.is_(None), at.c.hold_kind != PROVIDER_FAILED),
        )
    ).scalars()
    return pending_among(conn, schema, list(keys))


def held_orders(
    conn: sa.Connection, schema: AppSchema, report: InconsistencyReport
) -> dict[str, int]:
    """Orders the job leaves alone by design, by reason: each kind of inconsistency, and quarantine.

    Never counted as orphans: they wait for a human (``list-inconsistencies``), and stay
    here until the inconsistency is settled or the quarantine released.
    """
    held = {kind: int(report.counts.get(kind, 0)) for kind in INCONSISTENCY_KINDS}
    held[QUARANTINED] = len(quarantined_order_ids(conn, schema))
    return held


def held_order_ids(conn: sa.Connection, schema: AppSchema) -> dict[str, list]:
    """Held order ids by reason, from our own tables: each kind the tracker keeps open, and
    the quarantined pending orders (as :func:`quarantined_order_ids` counts them)."""
    inconsistencies = tb.owned_tables(schema.mapping.table_prefix).inconsistencies
    held: dict[str, list] = {}
    quarantined = quarantined_order_ids(conn, schema)
    if quarantined:
        held[QUARANTINED] = quarantined
    for kind, order_id in conn.execute(
        sa.select(inconsistencies.c.kind, inconsistencies.c.order_id).order_by(
            inconsistencies.c.kind, inconsistencies.c.order_id
        )
    ):
        held.setdefault(kind, []).append(order_id)
    return held


def held_in_window(
    conn: sa.Connection, schema: AppSchema, window: d.ScanWindow, fixable: int
) -> int:
    """Orders held within ``window``: every pending order with a completed payment in it, less
    the ``fixable`` ones the job would still regularize."""
    orphans = d.select_orphan_payments(schema, window, sa.func.count(sa.distinct(schema.o("id"))))
    return int(conn.execute(orphans).scalar_one()) - fixable
