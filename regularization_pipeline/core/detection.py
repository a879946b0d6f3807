"""Finding orphaned orders and the inconsistencies the pipeline must report, not fix.

An *orphan* is an order in a pending status, not soft-deleted, with a
completed transaction whose completion falls inside the scan window: older
than the grace period (recent payments are left to their webhook) and, when a
lookback or ``since`` bound is set, not older than that.

Every query here is set-based: one statement per figure or page, correlated
subqueries on ``transactions(order_id, status)``, never a query per order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.schema import AppSchema

DEFAULT_MIN_AGE_MINUTES = 10

# Kinds of inconsistency, each a stable key for metadata and alerts.
AMOUNT_MISMATCH = "amount_mismatch"
CURRENCY_MISMATCH = "currency_mismatch"
INVALID_AMOUNT = "invalid_amount"
DOUBLE_CHARGE = "double_charge"
PAID_BUT_CLOSED = "paid_but_cancelled"
MISSING_ORDER = "missing_order"
UNDATED_PAYMENT = "undated_payment"  # completed, but no completion time: no grace period can apply
PROVIDER_FAILED = "provider_failed"  # only known by asking the provider, never by SQL
INCONSISTENCY_KINDS = (
    AMOUNT_MISMATCH,
    CURRENCY_MISMATCH,
    INVALID_AMOUNT,
    DOUBLE_CHARGE,
    PAID_BUT_CLOSED,
    MISSING_ORDER,
    UNDATED_PAYMENT,
    PROVIDER_FAILED,
)


def utcnow() -> dt.datetime:
    """Naive UTC, the convention of every timestamp the pipeline reads or writes."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def as_naive_utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value


@dataclass(frozen=True)
class ScanWindow:
    """Which payments a scan considers, by when they completed.

    ``not_after`` is the grace cutoff (``now - min_age_minutes``, or ``until``
    when earlier); ``not_before`` is ``now - lookback_hours`` or ``since``,
    whichever is later, or unbounded.
    """

    now: dt.datetime
    min_age_minutes: float = DEFAULT_MIN_AGE_MINUTES
    lookback_hours: float | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def __post_init__(self) -> None:
        if self.min_age_minutes < 0:
            raise ConfigurationError(f"min_age_minutes must be >= 0, got {self.min_age_minutes}")
        if self.lookback_hours is not None and self.lookback_hours <= 0:
            raise ConfigurationError(f"lookback_hours must be > 0, got {self.lookback_hours}")
        if self.since and self.until and as_naive_utc(self.since) >= as_naive_utc(self.until):
            raise ConfigurationError(
                f"since ({self.since.isoformat()}) must be before until ({self.until.isoformat()})"
            )

    @property
    def not_after(self) -> dt.datetime:
        cutoff = self.now - dt.timedelta(minutes=self.min_age_minutes)
        return min(cutoff, as_naive_utc(self.until)) if self.until else cutoff

    @property
    def not_before(self) -> dt.datetime | None:
        bounds = []
        if self.lookback_hours is not None:
            bounds.append(self.now - dt.timedelta(hours=self.lookback_hours))
        if self.since:
            bounds.append(as_naive_utc(self.since))
        return max(bounds) if bounds else None


# --- predicates shared by the counts, the candidate pages and the reports -----------


def _order_is_live(s: AppSchema) -> list[sa.ColumnElement[bool]]:
    return [s.o("deleted_at").is_(None)] if s.has_o("deleted_at") else []


def order_is_pending(s: AppSchema) -> list[sa.ColumnElement[bool]]:
    return [s.o("status").in_(s.statuses.order_pending), *_order_is_live(s)]


def _tx_is_completed(
    s: AppSchema, window: ScanWindow | None = None
) -> list[sa.ColumnElement[bool]]:
    """A completed transaction (that completed inside the window, when one is given)."""
    conds = [s.t("status").in_(s.statuses.transaction_completed)]
    if window is not None:
        conds.append(s.tx_completed_at <= window.not_after)
        if window.not_before is not None:
            conds.append(s.tx_completed_at >= window.not_before)
    return conds


def _completed_tx(s: AppSchema, window: ScanWindow | None = None) -> list[sa.ColumnElement[bool]]:
    """A completed transaction of the order in the outer query."""
    return [s.t("order_id") == s.o("id"), *_tx_is_completed(s, window)]


def _exists_tx(s: AppSchema, *conds: sa.ColumnElement[bool]) -> sa.Exists:
    return sa.exists().select_from(s.transactions).where(*conds)


def _completed_tx_count(s: AppSchema) -> sa.ScalarSelect:
    return (
        sa.select(sa.func.count())
        .select_from(s.transactions)
        .where(*_completed_tx(s))
        .scalar_subquery()
    )


def _amount_problem(s: AppSchema) -> dict[str, sa.ColumnElement[bool]]:
    """Per-kind conditions on a completed transaction of a pending order (for EXISTS)."""
    amount, total = s.t("amount"), s.o("total")
    problems: dict[str, sa.ColumnElement[bool]] = {
        INVALID_AMOUNT: sa.or_(amount.is_(None), total.is_(None), amount < 0, total < 0),
        AMOUNT_MISMATCH: sa.and_(amount >= 0, total >= 0, amount != total),
    }
    if s.has_o("currency") and s.has_t("currency"):
        problems[CURRENCY_MISMATCH] = sa.and_(
            s.t("currency").is_not(None),
            s.o("currency").is_not(None),
            sa.func.upper(s.t("currency")) != sa.func.upper(s.o("currency")),
        )
    return problems


def pending_ids_after(s: AppSchema, after: Any, count: int) -> sa.Select:
    """The next ``count`` pending, live order ids after ``after``, in id order.

    A walk of ``orders (status, id)`` that stops after ``count`` rows. Filtering the
    orphans inside such a slice, rather than asking for "the first n orphans" of all
    pending orders, keeps each page's cost bounded: with the correlated conditions
    the planner cannot tell how many orders pass, and it evaluated them for every
    pending order before sorting (a batch cost O(pending orders)).
    """
    query = sa.select(s.o("id")).where(*order_is_pending(s))
    if after is not None:
        query = query.where(s.o("id") > after)
    return query.order_by(s.o("id")).limit(count)


def orphan_condition(s: AppSchema, window: ScanWindow) -> sa.ColumnElement[bool]:
    return sa.and_(*order_is_pending(s), _exists_tx(s, *_completed_tx(s, window)))


def regularizable_condition(s: AppSchema, window: ScanWindow) -> sa.ColumnElement[bool]:
    """An orphan with exactly one completed transaction whose amount and currency match.

    The order's own checks stay outside the subqueries: mixed into them (``total IS
    NULL OR amount IS NULL``) they kept PostgreSQL from probing the payments index
    and made every batch claim read all payments.
    """
    total = s.o("total")
    payment_problems = dict(_amount_problem(s))
    payment_problems[INVALID_AMOUNT] = sa.or_(s.t("amount").is_(None), s.t("amount") < 0)
    payment_problems[AMOUNT_MISMATCH] = s.t("amount") != total
    clean = [~_exists_tx(s, *_completed_tx(s), problem) for problem in payment_problems.values()]
    return sa.and_(
        orphan_condition(s, window),
        total.is_not(None),
        total >= 0,
        _completed_tx_count(s) == 1,
        *clean,
    )


# --- what the checks and the run summary read ---------------------------------------


@dataclass(frozen=True)
class OrphanStats:
    count: int
    oldest_completed_at: dt.datetime | None
    now: dt.datetime
    sample_ids: tuple = ()
    aged_out: int = 0

    @property
    def oldest_age_minutes(self) -> float:
        if self.oldest_completed_at is None:
            return 0.0
        return round(max((self.now - self.oldest_completed_at).total_seconds(), 0.0) / 60.0, 1)


def orphan_stats(
    conn: sa.Connection,
    s: AppSchema,
    window: ScanWindow,
    sample_size: int = 20,
    count_aged_out: bool = True,
) -> OrphanStats:
    """How many orphans, the oldest payment among them, a few ids, and how many aged out of the window.

    Counting the aged-out orphans reads the history before the window, so it costs
    about what a count with no window does; ``count_aged_out=False`` leaves it at 0.
    """
    # A join, not a subquery per order: the planner starts from the few pending orders
    # and probes their payments, the shape of the fastest hand-written query.
    count, oldest = conn.execute(
        sa.select(sa.func.count(sa.distinct(s.o("id"))), sa.func.min(s.tx_completed_at))
        .select_from(s.orders.join(s.transactions, sa.and_(*_completed_tx(s, window))))
        .where(*order_is_pending(s))
    ).one()
    sample = (
        tuple(
            conn.execute(
                sa.select(s.o("id"))
                .where(orphan_condition(s, window))
                .order_by(s.o("id"))
                .limit(sample_size)
            ).scalars()
        )
        if count and sample_size
        else ()
    )
    aged_out = 0
    if count_aged_out and window.not_before is not None:
        older = ScanWindow(
            now=window.now,
            min_age_minutes=0,
            until=window.not_before - dt.timedelta(microseconds=1),
        )
        aged_out = conn.execute(
            sa.select(sa.func.count()).where(orphan_condition(s, older))
        ).scalar_one()
    return OrphanStats(
        count=count,
        oldest_completed_at=_to_datetime(oldest),
        now=window.now,
        sample_ids=sample,
        aged_out=aged_out,
    )


def _to_datetime(value) -> dt.datetime | None:
    # SQLite hands aggregates of DATETIME columns back as strings.
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def candidate_pages(
    engine: sa.Engine,
    s: AppSchema,
    window: ScanWindow,
    page_size: int,
    after=None,
) -> Iterator[list]:
    """Ids of regularizable orphans in id order, one short read transaction per page.

    Keyset pagination (``id > last``) keeps each page an index range scan and
    lets the caller's per-order transactions run between pages.
    """
    last = after
    while True:
        query = sa.select(s.o("id")).where(regularizable_condition(s, window))
        if last is not None:
            query = query.where(s.o("id") > last)
        with engine.connect() as conn:
            page = list(conn.execute(query.order_by(s.o("id")).limit(page_size)).scalars())
        if not page:
            return
        yield page
        if len(page) < page_size:
            return
        last = page[-1]


@dataclass
class InconsistencyReport:
    """Counts per kind and the order ids behind them (capped), never fixed by the pipeline."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INCONSISTENCY_KINDS, 0))
    order_ids: dict[str, list] = field(default_factory=lambda: {k: [] for k in INCONSISTENCY_KINDS})

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
    of_orders = [] if only is None else [s.o("id").in_(only)]
    of_payments = [] if only is None else [s.t("order_id").in_(only)]
    report = InconsistencyReport()
    # The amount kinds in one pass: pending orders joined to their completed
    # payments, keeping only the rows with a problem (few), flagged per kind.
    problems = _amount_problem(s)
    flagged = conn.execute(
        sa.select(
            s.o("id").label("order_id"),
            *(sa.case((cond, 1), else_=0).label(kind) for kind, cond in problems.items()),
        )
        .select_from(s.orders.join(s.transactions, sa.and_(*_completed_tx(s, window))))
        .where(*order_is_pending(s), *of_orders, sa.or_(*problems.values()))
    ).all()
    for kind in problems:
        _keep(
            report,
            kind,
            sorted({row.order_id for row in flagged if getattr(row, kind)}, key=order_id_sort_key),
            sample_size,
        )

    # Orders charged twice, whatever their status: one grouped scan of the completed payments.
    charged_twice = (
        sa.select(s.t("order_id").label("order_id"))
        .where(*_tx_is_completed(s, window), *of_payments)
        .group_by(s.t("order_id"))
        .having(sa.func.count() > 1)
        .subquery()
    )
    live_order = (
        sa.exists()
        .select_from(s.orders)
        .where(s.o("id") == charged_twice.c.order_id, *_order_is_live(s))
    )
    queries: dict[str, sa.Select] = {
        DOUBLE_CHARGE: sa.select(charged_twice.c.order_id).where(live_order)
    }
    if s.statuses.order_do_not_touch:
        queries[PAID_BUT_CLOSED] = sa.select(s.o("id")).where(
            s.o("status").in_(s.statuses.order_do_not_touch),
            *_order_is_live(s),
            *of_orders,
            _exists_tx(s, *_completed_tx(s, window)),
        )
    no_order = ~sa.exists().select_from(s.orders).where(s.o("id") == s.t("order_id"))
    queries[MISSING_ORDER] = (
        sa.select(s.t("order_id"))
        .where(*_tx_is_completed(s, window), *of_payments, no_order)
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
            .where(*_tx_is_completed(s), s.tx_completed_at.is_(None), *of_payments, pending_order)
            .distinct()
        )

    for kind, query in queries.items():
        ids = query.subquery()
        first = ids.c[0]
        if sample_size == 0:
            report.counts[kind] = conn.execute(
                sa.select(sa.func.count()).select_from(ids)
            ).scalar_one()
            continue
        # The total rides along each row (a window function) so one execution gives both.
        page = sa.select(first, sa.func.count().over().label("total")).order_by(first)
        if sample_size is not None:
            page = page.limit(sample_size)
        rows = conn.execute(page).all()
        report.counts[kind] = rows[0].total if rows else 0
        report.order_ids[kind] = [row[0] for row in rows]
    return report
