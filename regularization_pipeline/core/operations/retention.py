"""Pruning of this project's history: audit rows and settled outbox events past a retention period.

What is pruned, in bounded batches (short transactions, bounded IN lists):

- audit rows created before the cutoff, except ``inconsistent`` ones: the audit
  trail is how a run knows an inconsistency was already reported (see
  ``Regularizer._audit_new_inconsistencies``); pruning those rows would report
  a standing inconsistency again. They are rare and need a human anyway;
- outbox events ``delivered`` or ``dead`` whose last change is before the
  cutoff, with their ``event_deliveries`` rows. A ``pending`` event is never
  pruned, however old: it still has to be delivered.

``order_attempts`` is kept: it holds quarantines and failure counts, one row per order.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from regularization_pipeline.core import verdicts
from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.operations.retention_period import DEFAULT_RETENTION_DAYS
from regularization_pipeline.core.shop import tables as tb

MAX_RETENTION_DAYS = 36_500
BATCH = 500


@dataclass(frozen=True)
class PruneSummary:
    cutoff: dt.datetime
    audit_rows: int
    outbox_events: int
    deliveries: int
    dry_run: bool = False

    def as_metrics(self) -> dict[str, int]:
        return {
            "pruned_audit_rows": self.audit_rows,
            "pruned_outbox_events": self.outbox_events,
            "pruned_event_deliveries": self.deliveries,
        }


def retention_cutoff(older_than_days: float, now: dt.datetime) -> dt.datetime:
    if not (math.isfinite(older_than_days) and 1 <= older_than_days <= MAX_RETENTION_DAYS):
        raise ConfigurationError(
            f"older_than_days must be a number from 1 to {MAX_RETENTION_DAYS}, got {older_than_days:g}"
        )
    return now - dt.timedelta(days=older_than_days)


def prune_history(
    engine: sa.Engine,
    tables: tb.OwnedTables,
    older_than_days: float = DEFAULT_RETENTION_DAYS,
    *,
    dry_run: bool = False,
    clock: Callable[[], dt.datetime] = utcnow,
) -> PruneSummary:
    """Delete (or, with ``dry_run``, count) the history older than ``older_than_days``."""
    cutoff = retention_cutoff(older_than_days, clock())
    au, ob = tables.audit, tables.outbox
    old_audit = [au.c.created_at < cutoff, au.c.action != verdicts.INCONSISTENT]
    settled = [ob.c.state.in_([tb.DELIVERED, tb.DEAD]), ob.c.updated_at < cutoff]
    if dry_run:
        return _count_prunable(engine, tables, old_audit, settled, cutoff)
    audit_rows = _prune_audit(engine, au, old_audit)
    events, deliveries = _prune_settled_events(engine, tables, settled)
    return PruneSummary(cutoff, audit_rows, events, deliveries)


def _count_prunable(engine, tables: tb.OwnedTables, old_audit, settled, cutoff) -> PruneSummary:
    au, ob, dl = tables.audit, tables.outbox, tables.deliveries
    with engine.connect() as conn:
        audit_rows = conn.execute(
            sa.select(sa.func.count()).select_from(au).where(*old_audit)
        ).scalar_one()
        events = conn.execute(
            sa.select(sa.func.count()).select_from(ob).where(*settled)
        ).scalar_one()
        deliveries = conn.execute(
            sa.select(sa.func.count())
            .select_from(dl.join(ob, dl.c.event_id == ob.c.event_id))
            .where(*settled)
        ).scalar_one()
    return PruneSummary(cutoff, int(audit_rows), int(events), int(deliveries), dry_run=True)


def _prune_audit(engine: sa.Engine, au: sa.Table, old_audit: list) -> int:
    pruned = 0
    while True:
        # Ids first, then delete by id: MySQL refuses a DELETE whose subquery reads the same table.
        with engine.begin() as conn:
            ids = list(
                conn.execute(
                    sa.select(au.c.id).where(*old_audit).order_by(au.c.id).limit(BATCH)
                ).scalars()
            )
            if ids:
                pruned += conn.execute(au.delete().where(au.c.id.in_(ids))).rowcount
        if len(ids) < BATCH:
            return pruned


def _prune_settled_events(
    engine: sa.Engine, tables: tb.OwnedTables, settled: list
) -> tuple[int, int]:
    ob, dl = tables.outbox, tables.deliveries
    events = deliveries = 0
    while True:
        with engine.begin() as conn:
            rows = conn.execute(
                sa.select(ob.c.id, ob.c.event_id).where(*settled).order_by(ob.c.id).limit(BATCH)
            ).all()
            ids = [r.id for r in rows]
            if rows:
                # The state is checked again: an event redelivered meanwhile is pending and stays,
                # and so do its deliveries (they spare its publishers a second copy).
                events += conn.execute(ob.delete().where(ob.c.id.in_(ids), *settled)).rowcount
                kept = set(conn.execute(sa.select(ob.c.event_id).where(ob.c.id.in_(ids))).scalars())
                gone = [r.event_id for r in rows if r.event_id not in kept]
                if gone:
                    deliveries += conn.execute(dl.delete().where(dl.c.event_id.in_(gone))).rowcount
        if len(rows) < BATCH:
            return events, deliveries
