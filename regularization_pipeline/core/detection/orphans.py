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
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa

# Re-exported here, where the scans use them, from the low modules that own them: the kinds
# (verdicts), the window (detection.window), what may be flipped (shop.binding), a currency
# as read (shop.rows).
from regularization_pipeline.core.detection.window import (
    DEFAULT_MIN_AGE_MINUTES as DEFAULT_MIN_AGE_MINUTES,
)
from regularization_pipeline.core.detection.window import ScanWindow as ScanWindow
from regularization_pipeline.core.shop.binding import AppSchema
from regularization_pipeline.core.shop.binding import (
    order_in_pending_status as order_in_pending_status,
)
from regularization_pipeline.core.shop.binding import order_is_live as order_is_live
from regularization_pipeline.core.shop.binding import order_is_pending as order_is_pending
from regularization_pipeline.core.shop.rows import currency_code as currency_code
from regularization_pipeline.core.verdicts import AMOUNT_MISMATCH as AMOUNT_MISMATCH
from regularization_pipeline.core.verdicts import CURRENCY_MISMATCH as CURRENCY_MISMATCH
from regularization_pipeline.core.verdicts import DOUBLE_CHARGE as DOUBLE_CHARGE
from regularization_pipeline.core.verdicts import INCONSISTENCY_KINDS as INCONSISTENCY_KINDS
from regularization_pipeline.core.verdicts import INVALID_AMOUNT as INVALID_AMOUNT
from regularization_pipeline.core.verdicts import MISSING_ORDER as MISSING_ORDER
from regularization_pipeline.core.verdicts import PAID_BUT_CLOSED as PAID_BUT_CLOSED
from regularization_pipeline.core.verdicts import PROVIDER_FAILED as PROVIDER_FAILED
from regularization_pipeline.core.verdicts import UNDATED_PAYMENT as UNDATED_PAYMENT

# --- predicates shared by the counts, the candidate pages and the reports -----------


def currencies_differ(
    s: AppSchema, paid_in: sa.ColumnElement, due_in: sa.ColumnElement
) -> sa.ColumnElement[bool]:
    """Two set currencies differ: text codes as :func:`currency_code` reads them, ids as they are."""
    if s.currency_is_text:
        paid, due = sa.func.upper(sa.func.trim(paid_in)), sa.func.upper(sa.func.trim(due_in))
        return sa.and_(paid != "", due != "", paid != due)
    return paid_in != due_in


def payment_is_completed(
    s: AppSchema, window: ScanWindow | None = None
) -> list[sa.ColumnElement[bool]]:
    """A completed transaction (that completed inside the window, when one is given)."""
    conds = [s.t("status").in_(s.statuses.transaction_completed)]
    if window is not None:
        paid_at = s.tx_completed_at
        conds.append(paid_at <= s.shop_time(paid_at, window.not_after))
        if window.not_before is not None:
            conds.append(paid_at >= s.shop_time(paid_at, window.not_before))
    return conds


def completed_payment_of_order(
    s: AppSchema, window: ScanWindow | None = None
) -> list[sa.ColumnElement[bool]]:
    """A completed transaction of the order in the outer query."""
    return [s.t("order_id") == s.o("id"), *payment_is_completed(s, window)]


def exists_payment(s: AppSchema, *conds: sa.ColumnElement[bool]) -> sa.Exists:
    """A payment of the order in the outer query: only the order is correlated, so the
    subquery keeps its own FROM even inside a query that joins the payments too."""
    return sa.exists().select_from(s.transactions).where(*conds).correlate_except(s.transactions)


def completed_payment_count(s: AppSchema) -> sa.ScalarSelect:
    return (
        sa.select(sa.func.count())
        .select_from(s.transactions)
        .where(*completed_payment_of_order(s))
        .correlate_except(s.transactions)
        .scalar_subquery()
    )


def amount_problems(s: AppSchema) -> dict[str, sa.ColumnElement[bool]]:
    """Per-kind conditions on a completed transaction of a pending order (for EXISTS)."""
    amount, total = s.t("amount"), s.o("total")
    problems: dict[str, sa.ColumnElement[bool]] = {
        INVALID_AMOUNT: sa.or_(amount.is_(None), total.is_(None), amount < 0, total < 0),
        AMOUNT_MISMATCH: sa.and_(amount >= 0, total >= 0, amount != total),
    }
    if s.has_o("currency") and s.has_t("currency"):
        paid_in, due_in = s.currency("t"), s.currency("o")
        problems[CURRENCY_MISMATCH] = sa.and_(
            paid_in.is_not(None), due_in.is_not(None), currencies_differ(s, paid_in, due_in)
        )
    return problems


def select_orphan_payments(s: AppSchema, window: ScanWindow | None, *columns) -> sa.Select:
    """``columns`` over every pending, live order joined to its completed payments in the window.

    The join form of :func:`orphan_condition`: an orphan is an order that has at least
    one such row. The planner starts from the few pending orders and probes their
    payments, the shape of the fastest hand-written query.
    """
    return (
        sa.select(*columns)
        .select_from(s.orders.join(s.transactions, sa.and_(*completed_payment_of_order(s, window))))
        .where(*order_is_pending(s))
    )


def orphan_condition(s: AppSchema, window: ScanWindow) -> sa.ColumnElement[bool]:
    """An orphan: a pending, live order with a completed payment inside the window."""
    return sa.and_(*order_is_pending(s), exists_payment(s, *completed_payment_of_order(s, window)))


def regularizable_condition(s: AppSchema, window: ScanWindow) -> sa.ColumnElement[bool]:
    """An orphan with exactly one completed transaction whose amount and currency match.

    The order's own checks stay outside the subqueries: mixed into them (``total IS
    NULL OR amount IS NULL``) they kept PostgreSQL from probing the payments index
    and made every batch claim read all payments.
    """
    total = s.o("total")
    payment_problems = dict(amount_problems(s))
    payment_problems[INVALID_AMOUNT] = sa.or_(s.t("amount").is_(None), s.t("amount") < 0)
    payment_problems[AMOUNT_MISMATCH] = s.t("amount") != total
    # One NOT EXISTS for every problem, not one each: each of them alone, uncorrelated but for
    # the order id, MariaDB materialized by reading every completed payment (0.5 s per claim
    # on a million payments); with the order's total inside it stays a probe per order.
    clean = ~exists_payment(s, *completed_payment_of_order(s), sa.or_(*payment_problems.values()))
    return sa.and_(
        orphan_condition(s, window),
        total.is_not(None),
        total >= 0,
        completed_payment_count(s) == 1,
        clean,
    )


# --- what the checks and the run summary read ---------------------------------------


@dataclass(frozen=True)
class OrphanStats:
    count: int
    oldest_completed_at: dt.datetime | None
    now: dt.datetime
    sample_ids: tuple = ()
    aged_out: int = 0
    # The queue's key of the last sampled order, as read: where the queue goes on after the sample.
    sample_end: tuple | None = None

    @property
    def oldest_age_minutes(self) -> float:
        if self.oldest_completed_at is None:
            return 0.0
        return round(max((self.now - self.oldest_completed_at).total_seconds(), 0.0) / 60.0, 1)


def is_quarantined(s: AppSchema, attempts: sa.Table) -> sa.Exists:
    """The order has been set aside: it failed too often, or the provider said its payment failed."""
    return sa.exists().where(
        attempts.c.order_id == sa.cast(s.o("id"), sa.String), attempts.c.quarantined_at.is_not(None)
    )


def fixable_condition(
    s: AppSchema, window: ScanWindow, attempts: sa.Table | None
) -> sa.ColumnElement[bool]:
    """An orphan the job would fix: regularizable and, when our tables exist, not quarantined.

    Every other orphan is *held*: an inconsistency, or a quarantine, that waits for a
    human. Held orders are counted apart (``held_orders_<reason>``), never as orphans.
    """
    condition = regularizable_condition(s, window)
    return condition if attempts is None else sa.and_(condition, ~is_quarantined(s, attempts))


def fixable_orders(s: AppSchema, window: ScanWindow, attempts: sa.Table | None) -> sa.Subquery:
    """One row per orphan the job would fix (``order_id``, ``paid_at``): the grouped form of
    :func:`fixable_condition`, for counts over the whole backlog.

    One pass over the pending orders' completed payments, grouped by order: exactly one
    completed payment, inside the window, paying the order's total in its currency. The
    correlated form costs a few subqueries per pending order, which over a backlog of
    100,000 orphans took minutes; it stays for pages and claims, which stop early.
    """
    paid_at, amount, total = s.tx_completed_at, s.t("amount"), s.o("total")
    group = [s.o("id"), total]
    having = [
        sa.func.count() == 1,
        sa.func.max(paid_at) <= s.shop_time(paid_at, window.not_after),
        sa.func.max(amount) == total,
        sa.func.min(amount) >= 0,
        total >= 0,
    ]
    if window.not_before is not None:
        having.append(sa.func.max(paid_at) >= s.shop_time(paid_at, window.not_before))
    if s.has_o("currency") and s.has_t("currency") and not s.currency_ids:
        currency, paid_in = s.o("currency"), sa.func.max(s.t("currency"))
        group.append(currency)
        having.append(
            sa.or_(
                paid_in.is_(None),
                currency.is_(None),
                ~currencies_differ(s, paid_in, currency),
            )
        )
    if s.currency_ids:  # an id read as a code: no aggregate of a subquery, the row check instead
        having.append(
            sa.func.max(sa.case((amount_problems(s)[CURRENCY_MISMATCH], 1), else_=0)) == 0
        )
    pending = list(order_is_pending(s))
    if attempts is not None:
        pending.append(~is_quarantined(s, attempts))
    return (
        sa.select(s.o("id").label("order_id"), sa.func.max(paid_at).label("paid_at"))
        .select_from(s.orders.join(s.transactions, sa.and_(*completed_payment_of_order(s))))
        .where(*pending)
        .group_by(*group)
        .having(*having)
        .subquery()
    )


def orphan_stats(
    conn: sa.Connection,
    s: AppSchema,
    window: ScanWindow,
    sample_size: int = 20,
    count_aged_out: bool = True,
    *,
    attempts: sa.Table | None = None,
) -> OrphanStats:
    """How many orphans the job would fix, the oldest payment among them, the ids of the
    ``sample_size`` whose payment completed first, and how many aged out of the window.
    ``attempts`` (our attempts table) leaves quarantined ones out.

    The count, the oldest payment and the sample come from one pass (a window count over
    the queue's first rows), so the sample costs no second scan of the backlog. Counting the
    aged-out orphans reads the history before the window, so it costs about what a count
    with no window does; ``count_aged_out=False`` leaves it at 0.
    """
    if sample_size:
        first = fixable_in_payment_order(s, window, attempts)
        rows = conn.execute(first.add_columns(sa.func.count().over()).limit(sample_size)).all()
        count, oldest = (rows[0][2], rows[0].paid_at) if rows else (0, None)
        sample = tuple(row.order_id for row in rows)
        end = (rows[-1].paid_at, rows[-1].order_id) if rows else None
    else:
        fixable = fixable_orders(s, window, attempts)
        query = sa.select(sa.func.count(), sa.func.min(fixable.c.paid_at))
        count, oldest = conn.execute(query).one()
        sample, end = (), None
    aged_out = 0
    if count_aged_out and window.not_before is not None:
        older = ScanWindow(
            now=window.now,
            min_age_minutes=0,
            until=window.not_before - dt.timedelta(microseconds=1),
        )
        older_fixable = fixable_orders(s, older, attempts)
        aged_out = conn.execute(sa.select(sa.func.count()).select_from(older_fixable)).scalar_one()
    return OrphanStats(
        count=count,
        oldest_completed_at=s.read_time(oldest),
        now=window.now,
        sample_ids=sample,
        aged_out=aged_out,
        sample_end=end,
    )


def fixable_in_payment_order(
    s: AppSchema, window: ScanWindow, attempts: sa.Table | None, after: tuple | None = None
) -> sa.Select:
    """The orphans the job would fix, the one whose payment completed first, first.

    ``(order_id, paid_at)`` rows of :func:`fixable_orders` ordered by ``(paid_at, order_id)``,
    after the key ``after`` (a ``(paid_at, order_id)`` read from an earlier page, bound back
    as the database returned it, so a shop's own time format compares as it sorts).
    The customer who waited longest comes first, as in ``list-orphans``; the order id
    breaks ties (payments recorded as a date share their day).
    """
    fixable = fixable_orders(s, window, attempts)
    query = sa.select(fixable.c.order_id, fixable.c.paid_at)
    if after is not None:
        paid_at, order_id = after
        query = query.where(
            sa.or_(
                fixable.c.paid_at > paid_at,
                sa.and_(fixable.c.paid_at == paid_at, fixable.c.order_id > order_id),
            )
        )
    return query.order_by(fixable.c.paid_at, fixable.c.order_id)


def fixable_pages(
    engine: sa.Engine,
    s: AppSchema,
    window: ScanWindow,
    page_size: int,
    *,
    attempts: sa.Table | None = None,
    head: OrphanStats | None = None,
) -> Iterator[list]:
    """Ids of the orphans the job would fix, oldest payment first, one read per page.

    Each page is one pass over the pending orders' completed payments (what the orphan
    count reads), in its own short read transaction, so the caller's write transactions
    run between pages; the keyset ``(paid_at, order_id)`` moves on past every order of
    the pages before, those the run fixed and those it left alike. ``head``: the run's
    survey, read with ``sample_size=page_size``; its sample is the first page, so the
    backlog is not read again for it.
    """
    if head is not None:
        if not head.sample_ids:
            return
        yield list(head.sample_ids)
        if len(head.sample_ids) < page_size:
            return
    last = head.sample_end if head is not None else None
    while True:
        query = fixable_in_payment_order(s, window, attempts, last).limit(page_size)
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return
        yield [row.order_id for row in rows]
        if len(rows) < page_size:
            return
        last = (rows[-1].paid_at, rows[-1].order_id)
