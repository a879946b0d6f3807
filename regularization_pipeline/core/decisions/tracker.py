"""The inconsistencies open right now, kept current without rescanning the whole history.

A full scan of every payment for double charges and payments without an order
costs about a second per million orders, and the check and the run both need
the answer every five minutes. An order's inconsistency can only appear or
clear when the order or its payments change, so each scan here re-examines:

* the orders with a payment completed since the previous scan (less
  ``LATE_COMMIT_MARGIN``: a payment dated before its transaction committed is
  still seen), which is how a double charge, a mismatch or a paid-but-cancelled
  order arrives;
* every inconsistency still open, so one that clears is seen at once;

and stores the result in ``<prefix>inconsistencies``. What changes outside a
payment (an order deleted outright, a total edited, an order cancelled hours
after its payment, a payment backfilled with an old date) is found by the full
scan, done when the last one is older than ``full_scan_every`` (a day by
default), when the incremental scope grows past ``MAX_SCOPED_ORDERS``, and when
asked for. Scans serialize on the ``<prefix>scan_state`` row, so a check and a
run that start together do the work once.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from regularization_pipeline.core import verdicts
from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.decisions.attempt_rows import note_attempt
from regularization_pipeline.core.decisions.audit import Decision, write_audit
from regularization_pipeline.core.decisions.context import RunContext, orders_and_payments
from regularization_pipeline.core.decisions.verification import inconsistent
from regularization_pipeline.core.detection.scans import (
    InconsistencyReport,
    inconsistency_report,
    order_id_sort_key,
    with_provider_failures,
)
from regularization_pipeline.core.errors import describe_error, is_lock_unavailable
from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.core.shop.binding import AppSchema
from regularization_pipeline.core.shop.migrations import require_migrated

log = logging.getLogger("regularization_pipeline.regularizer")

# How long a scan waits for another one to finish before reporting the stored results instead.
SCAN_LOCK_WAIT_SECONDS = 20.0

SCAN_NAME = "inconsistencies"  # the scan_state row, created by migration 0003
FULL_SCAN_EVERY = dt.timedelta(hours=24)
LATE_COMMIT_MARGIN = dt.timedelta(hours=1)
# Past this many orders to re-examine, one full scan is cheaper than the probes.
MAX_SCOPED_ORDERS = 20_000


class InconsistencyTracker:
    """Reports the open inconsistencies of the whole history, refreshed incrementally."""

    def __init__(
        self,
        engine: sa.Engine,
        schema: AppSchema,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        full_scan_every: dt.timedelta = FULL_SCAN_EVERY,
    ):
        self.engine = engine
        self.schema = schema
        self.tables = tb.owned_tables(schema.mapping.table_prefix)
        self.clock = clock
        self.full_scan_every = full_scan_every

    def refresh(self, *, full: bool = False) -> InconsistencyReport:
        """Re-examine what may have changed (everything when ``full`` or due), store it, return every open one.

        One scan at a time holds the scan state. Another one under way (a full scan of a
        large shop takes a while) is waited on for ``SCAN_LOCK_WAIT_SECONDS`` at most, in
        short tries that never hit the database's lock timeout; then this one reports the
        last stored results, marked ``scan_skipped``, instead of failing its step.
        """
        require_migrated(self.engine, self.schema.mapping.table_prefix)
        give_up = time.monotonic() + SCAN_LOCK_WAIT_SECONDS
        while True:
            try:
                return self._scan(full)
            except sa.exc.DBAPIError as exc:
                if not is_lock_unavailable(exc):
                    raise
                if time.monotonic() >= give_up:
                    log.warning(
                        "inconsistency scan skipped: another one held the scan state for %gs (%s); "
                        "reporting the last stored results",
                        SCAN_LOCK_WAIT_SECONDS,
                        describe_error(exc),
                    )
                    break
                time.sleep(0.2)
        with self.engine.connect() as conn:
            report = with_provider_failures(conn, self.schema, self._open(conn))
        report.scan_skipped = True
        return report

    def _scan(self, full: bool) -> InconsistencyReport:
        st = self.tables.scan_state
        with self.engine.begin() as conn:
            state = conn.execute(
                sa.select(st).where(st.c.name == SCAN_NAME).with_for_update(nowait=True)
            ).one()
            now = self.clock()
            scope = None if full else self._incremental_scope(conn, state, now)
            found = inconsistency_report(conn, self.schema, sample_size=None, order_ids=scope)
            self._store(conn, found, scope, now)
            values = (
                {"scanned_at": now}
                if scope is not None
                else {"scanned_at": now, "full_scan_at": now}
            )
            conn.execute(st.update().where(st.c.name == SCAN_NAME).values(**values))
            return with_provider_failures(conn, self.schema, self._open(conn))

    def _incremental_scope(self, conn: sa.Connection, state: Any, now: dt.datetime) -> set | None:
        """The orders to re-examine, or None when a full scan is due."""
        if (
            state.scanned_at is None
            or state.full_scan_at is None
            or now - state.full_scan_at >= self.full_scan_every
        ):
            return None
        s = self.schema
        since = state.scanned_at - LATE_COMMIT_MARGIN
        paid = (
            sa.select(s.t("order_id"))
            .where(
                s.t("status").in_(s.statuses.transaction_completed),
                s.tx_completed_at >= s.shop_time(s.tx_completed_at, since),
            )
            .distinct()
            .limit(MAX_SCOPED_ORDERS + 1)
        )
        scope = set(conn.execute(paid).scalars())
        as_app_id = self._app_id_type(conn)
        scope.update(
            as_app_id(i)
            for i in conn.execute(sa.select(self.tables.inconsistencies.c.order_id)).scalars()
        )
        return None if len(scope) > MAX_SCOPED_ORDERS else scope

    def _app_id_type(self, conn: sa.Connection) -> Callable[[str], Any]:
        """Our tables keep order ids as text; the application's queries want its own type.

        The mapping binds untyped columns, so the type is read off one stored id.
        """
        for column in (self.schema.o("id"), self.schema.t("order_id")):
            sample = conn.execute(sa.select(column).where(column.is_not(None)).limit(1)).scalar()
            if sample is not None:
                return type(sample)
        return str

    def _store(
        self, conn: sa.Connection, found: InconsistencyReport, scope: set | None, now: dt.datetime
    ) -> None:
        """Make the stored rows for ``scope`` (everything when None) exactly ``found``, keeping first_seen_at."""
        inc = self.tables.inconsistencies
        examined = None if scope is None else {str(i) for i in scope}
        current = {
            (str(order_id), kind) for kind, ids in found.order_ids.items() for order_id in ids
        }
        stored = {
            (row.order_id, row.kind)
            for row in conn.execute(sa.select(inc.c.order_id, inc.c.kind))
            if examined is None or row.order_id in examined
        }
        for order_id, kind in stored - current:
            conn.execute(inc.delete().where(inc.c.order_id == order_id, inc.c.kind == kind))
        opened = [
            {"order_id": o, "kind": k, "first_seen_at": now} for o, k in sorted(current - stored)
        ]
        if opened:
            conn.execute(inc.insert(), opened)

    def _open(self, conn: sa.Connection) -> InconsistencyReport:
        inc = self.tables.inconsistencies
        report = InconsistencyReport()
        as_app_id = self._app_id_type(conn)
        for row in conn.execute(sa.select(inc.c.order_id, inc.c.kind)):
            report.order_ids.setdefault(row.kind, []).append(as_app_id(row.order_id))
        for kind, ids in report.order_ids.items():
            ids.sort(key=order_id_sort_key)
            report.counts[kind] = len(ids)
        return report


def open_report(ctx: RunContext, bounds_history: bool) -> InconsistencyReport:
    """Every open inconsistency a run reports: every id, not a sample (one past it would never be audited).

    The whole history comes from the tracker, which re-examines only what may
    have changed; a bounded window, or a dry run (which writes nothing of ours
    either), is scanned as asked.
    """
    if bounds_history or ctx.dry_run:
        with ctx.engine.connect() as conn:
            report = inconsistency_report(conn, ctx.schema, ctx.window, sample_size=None)
            return with_provider_failures(conn, ctx.schema, report)
    return InconsistencyTracker(ctx.engine, ctx.schema, clock=ctx.clock).refresh()


# Order ids per audit transaction: bounded IN lists and transactions.
AUDIT_CHUNK = 500


def audit_new_inconsistencies(ctx: RunContext, report: InconsistencyReport) -> None:
    """Audit each standing inconsistency once per order and kind, when first seen.

    The audit trail itself is the memory: an order can carry two kinds at
    once (an amount mismatch that is also a double charge), so remembering
    only the last kind would audit both again on every run.
    """
    for kind, ids in report.order_ids.items():
        for start in range(0, len(ids), AUDIT_CHUNK):
            try:
                _audit_first_seen(ctx, kind, ids[start : start + AUDIT_CHUNK])
            except Exception as exc:  # an overlapping run wrote the same rows first
                log.warning(
                    "run %s: could not audit %s inconsistencies: %s",
                    ctx.run_id,
                    kind,
                    describe_error(exc),
                )


def _audit_first_seen(ctx: RunContext, kind: str, ids: list) -> None:
    au = ctx.tables.audit
    with ctx.engine.begin() as conn:
        seen = set(
            conn.execute(
                sa.select(au.c.order_id).where(
                    au.c.order_id.in_([str(i) for i in ids]),
                    au.c.action == verdicts.INCONSISTENT,
                    au.c.kind == kind,
                )
            ).scalars()
        )
        new = [order_id for order_id in ids if str(order_id) not in seen]
        # The figures a human settles it with ride on the row: the order's total and currency,
        # the payment's id, amount, currency and time (every payment's id when there are more).
        orders, payments = orders_and_payments(conn, ctx.statements, new) if new else ({}, {})
        decisions = []
        for order_id in new:
            paid = payments.get(str(order_id), [])
            also = f" (transactions {', '.join(str(p.id) for p in paid)})" if len(paid) > 1 else ""
            verdict = inconsistent(kind, f"reported, not fixed{also}", paid[0] if paid else None)
            note_attempt(ctx, conn, order_id, verdict, failed=False)
            decisions.append(Decision(order_id, verdict, orders.get(str(order_id))))
        write_audit(ctx, conn, decisions)
