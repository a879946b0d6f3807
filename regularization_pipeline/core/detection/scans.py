"""The inconsistencies the pipeline reports and never fixes, found by set-based queries.

One query per kind (the amount kinds share one pass), over the whole history,
a window of payments, or a given set of orders; never a query per order. The
kinds are named in :mod:`regularization_pipeline.core.detection.orphans`, whose
predicates these queries share with the orphan scan.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import sqlalchemy as sa

from regularization_pipeline.core import verdicts
from regularization_pipeline.core.detection.orphans import (
    DOUBLE_CHARGE,
    INCONSISTENCY_KINDS,
    MISSING_ORDER,
    PAID_BUT_CLOSED,
    PROVIDER_FAILED,
    UNDATED_PAYMENT,
    ScanWindow,
    amount_problems,
    completed_payment_of_order,
    exists_payment,
    order_in_pending_status,
    order_is_live,
    order_is_pending,
    payment_is_completed,
    select_orphan_payments,
)
from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.core.shop.binding import AppSchema
from regularization_pipeline.core.shop.guards import guarded_out


@dataclass
class InconsistencyReport:
    """Counts per kind and the order ids behind them (capped), never fixed by the pipeline."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INCONSISTENCY_KINDS, 0))
    order_ids: dict[str, list] = field(default_factory=lambda: {k: [] for k in INCONSISTENCY_KINDS})
    # True when another scan held the scan state: these are the last stored results, not re-examined.
    scan_skipped: bool = False

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def order_id_sort_key(value):
    """Integers in numeric order, then any other id as text: a stable order for mixed ids."""
    return (0, value) if isinstance(value, int) else (1, str(value))


def _keep(report: InconsistencyReport, kind: str, ids: list, sample_size: int | None) -> None:
    report.counts[kind] = len(ids)
    report.order_ids[kind] = ids if sample_size is None else ids[:sample_size]


# Ids per IN list when a report is confined to given orders: well under every
# backend's limit on bound parameters, and each list still one indexed probe.
ORDER_ID_CHUNK = 1000


def inconsistency_report(
    conn: sa.Connection,
    s: AppSchema,
    window: ScanWindow | None = None,
    sample_size: int | None = 100,
    order_ids: Collection | None = None,
) -> InconsistencyReport:
    """Every kind of inconsistency, one set-based query each (window bounds the payments looked at).

    ``sample_size`` caps the ids kept per kind; ``None`` keeps them all (a run audits every one).
    ``order_ids`` confines the report to those orders (every id kept), a few indexed
    probes instead of a scan of the whole history.
    """
    if order_ids is None:
        return _report(conn, s, window, sample_size, None)
    merged = InconsistencyReport()
    ids = sorted(set(order_ids), key=order_id_sort_key)
    for start in range(0, len(ids), ORDER_ID_CHUNK):
        part = _report(conn, s, window, None, ids[start : start + ORDER_ID_CHUNK])
        for kind, found in part.order_ids.items():
            merged.order_ids[kind].extend(found)
    for kind, found in merged.order_ids.items():
        found.sort(key=order_id_sort_key)
        merged.counts[kind] = len(found)
    return merged


def _report(
    conn: sa.Connection,
    s: AppSchema,
    window: ScanWindow | None,
    sample_size: int | None,
    only: list | None,
) -> InconsistencyReport:
    """The report over every order, or over the orders ``only`` names."""
    report = InconsistencyReport()
    _amount_kinds(conn, s, window, only, report, sample_size)
    for kind, query in _kind_queries(s, window, only).items():
        ids = query.subquery()
        first = ids.c[0]
        if sample_size == 0:
            count = sa.select(sa.func.count()).select_from(ids)
            report.counts[kind] = conn.execute(count).scalar_one()
            continue
        # The total rides along each row (a window function) so one execution gives both.
        page = sa.select(first, sa.func.count().over().label("total")).order_by(first)
        if sample_size is not None:
            page = page.limit(sample_size)
        rows = conn.execute(page).all()
        report.counts[kind] = rows[0].total if rows else 0
        report.order_ids[kind] = [row[0] for row in rows]
    return report


def _amount_kinds(
    conn: sa.Connection,
    s: AppSchema,
    window: ScanWindow | None,
    only: list | None,
    report: InconsistencyReport,
    sample_size: int | None,
) -> None:
    """The amount kinds in one pass: pending orders joined to their completed payments,
    keeping only the rows with a problem (few), flagged per kind."""
    of_orders = [] if only is None else [s.o("id").in_(only)]
    problems = amount_problems(s)
    flagged = conn.execute(
        select_orphan_payments(
            s,
            window,
            s.o("id").label("order_id"),
            *(sa.case((cond, 1), else_=0).label(kind) for kind, cond in problems.items()),
        ).where(*of_orders, sa.or_(*problems.values()))
    ).all()
    for kind in problems:
        ids = {row.order_id for row in flagged if getattr(row, kind)}
        _keep(report, kind, sorted(ids, key=order_id_sort_key), sample_size)


def _kind_queries(
    s: AppSchema, window: ScanWindow | None, only: list | None
) -> dict[str, sa.Select]:
    """One query of order ids per kind that is not about amounts."""
    of_orders = [] if only is None else [s.o("id").in_(only)]
    of_payments = [] if only is None else [s.t("order_id").in_(only)]
    # Orders charged twice, whatever their status: one grouped scan of the completed payments.
    charged_twice = (
        sa.select(s.t("order_id").label("order_id"))
        .where(*payment_is_completed(s, window), *of_payments)
        .group_by(s.t("order_id"))
        .having(sa.func.count() > 1)
        .subquery()
    )
    live_order = (
        sa.exists()
        .select_from(s.orders)
        .where(s.o("id") == charged_twice.c.order_id, *order_is_live(s))
    )
    queries: dict[str, sa.Select] = {
        DOUBLE_CHARGE: sa.select(charged_twice.c.order_id).where(live_order)
    }
    # Paid, but closed: by its status, or (pending by its status) by a guard of the mapping.
    closed = []
    if s.statuses.order_do_not_touch:
        closed.append(sa.and_(s.o("status").in_(s.statuses.order_do_not_touch), *order_is_live(s)))
    guarded = guarded_out(s)
    if guarded is not None:
        closed.append(sa.and_(*order_in_pending_status(s), guarded))
    if closed:
        queries[PAID_BUT_CLOSED] = sa.select(s.o("id")).where(
            sa.or_(*closed),
            *of_orders,
            exists_payment(s, *completed_payment_of_order(s, window)),
        )
    no_order = ~sa.exists().select_from(s.orders).where(s.o("id") == s.t("order_id"))
    queries[MISSING_ORDER] = (
        sa.select(s.t("order_id"))
        .where(*payment_is_completed(s, window), *of_payments, no_order)
        .distinct()
    )
    if window is None:  # an undated payment falls in no window: the whole-history report has it
        # Without it a paid order would never be found, counted or aged out: silently dropped.
        pending_order = (
            sa.exists()
            .select_from(s.orders)
            .where(s.o("id") == s.t("order_id"), *order_is_pending(s))
        )
        queries[UNDATED_PAYMENT] = (
            sa.select(s.t("order_id"))
            .where(
                *payment_is_completed(s), s.tx_completed_at.is_(None), *of_payments, pending_order
            )
            .distinct()
        )
    return queries


def with_provider_failures(
    conn: sa.Connection, schema: AppSchema, report: InconsistencyReport
) -> InconsistencyReport:
    """``report`` with the pending orders held because the provider said their payment failed or was refunded.

    SQL cannot see that kind: it is known from the run that asked the provider,
    which holds the order (quarantine) so it is not asked again every five
    minutes. It stays open while the order is pending and held; ``release`` lets
    the next run ask again.
    """
    s, at = schema, tb.owned_tables(schema.mapping.table_prefix).attempts
    keys = list(
        conn.execute(
            sa.select(at.c.order_id).where(
                at.c.quarantined_at.is_not(None),
                at.c.last_outcome == verdicts.INCONSISTENT,
                at.c.hold_kind == PROVIDER_FAILED,
            )
        ).scalars()
    )
    ids = pending_among(conn, s, keys)
    report.order_ids[PROVIDER_FAILED], report.counts[PROVIDER_FAILED] = ids, len(ids)
    return report


def pending_among(conn: sa.Connection, s: AppSchema, keys: list[str]) -> list:
    """The pending, live orders among ``keys`` (order ids as our tables keep them, text)."""
    if not keys:  # usually none: the orders table is only read when some are held
        return []
    found = []
    for start in range(0, len(keys), ORDER_ID_CHUNK):
        chunk = keys[start : start + ORDER_ID_CHUNK]
        held = sa.select(s.o("id")).where(
            sa.cast(s.o("id"), sa.String).in_(chunk), *order_is_pending(s)
        )
        found.extend(conn.execute(held).scalars())
    return sorted(found, key=order_id_sort_key)
