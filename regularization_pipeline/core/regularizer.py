"""Claim -> verify -> flip, with the OrderCompleted outbox row and the audit row, per order.

Each order is decided in one database transaction:

1. lock the order row (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL and
   MariaDB/MySQL; on SQLite the transaction began ``IMMEDIATE`` and holds the
   database's write lock), and re-read it and its transactions under the lock;
2. verify (:func:`regularization_pipeline.core.verification.verify`);
3. flip with a compare-and-set ``UPDATE ... WHERE id = :id AND status IN (pending...)``;
4. insert the outbox row and the audit row; commit.

A late webhook that completed the order first makes step 2 or 3 find it
completed: the order is skipped and no event is written. Any exception rolls
the whole order back; the failure is then counted in ``order_attempts`` in a
transaction of its own, and after ``max_attempts`` failures the order is
quarantined: reported, never retried until an operator releases it.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from types import SimpleNamespace
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.dialects import mysql, postgresql, sqlite

from regularization_pipeline.core import detection as d
from regularization_pipeline.core import tables as tb
from regularization_pipeline.core.db import check_reachable, insert_many, supports_skip_locked
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.events import new_event, outbox_row
from regularization_pipeline.core.inconsistencies import (
    InconsistencyTracker,
    with_provider_failures,
)
from regularization_pipeline.core.migrations import require_migrated
from regularization_pipeline.core.schema import AppSchema, validate_or_explain
from regularization_pipeline.core.verification import (
    OrderRow,
    PaymentVerifier,
    ProviderAnswer,
    ProviderRejectedError,
    ProviderUnavailableError,
    TransactionRow,
    Verdict,
    apply_provider_answer,
    to_decimal,
    verify,
)

log = logging.getLogger("regularization_pipeline.regularizer")

LOCKED_ELSEWHERE = "order is locked by another worker"
PROVIDER_UNAVAILABLE = "provider unavailable: left for the next run"


class RunOptions(BaseModel):
    """How one run behaves. The same fields are the Dagster run config of ``regularized_orders``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(
        50,
        ge=1,
        le=10_000_000,
        description="Maximum number of orders to act on in this run (the original --limit).",
    )
    sleep: float = Field(
        2.0,
        ge=0,
        le=3600,
        description="Seconds to wait between two orders, to spare the application and the provider (the original --sleep).",
    )
    lookback_hours: float | None = Field(
        None,
        gt=0,
        description="Only payments completed within this many hours; older orphans are counted as aged out, not dropped silently.",
    )
    min_age_minutes: float = Field(
        d.DEFAULT_MIN_AGE_MINUTES,
        ge=0,
        le=525_600,
        description="Grace period: payments completed more recently are left to their webhook.",
    )
    dry_run: bool = Field(
        False,
        description="Decide and audit as 'dry-run' without changing any order or writing any event.",
    )
    batch_size: int = Field(
        50,
        ge=1,
        le=10_000,
        description="How many candidate order ids are read per page of the scan.",
    )
    max_attempts: int = Field(
        5,
        ge=1,
        le=1_000,
        description="Failed attempts after which an order is quarantined instead of retried.",
    )
    since: dt.datetime | None = Field(
        None, description="Only payments completed at or after this UTC time (ISO 8601)."
    )
    until: dt.datetime | None = Field(
        None, description="Only payments completed at or before this UTC time (ISO 8601)."
    )
    max_runtime_seconds: float | None = Field(
        None,
        gt=0,
        description="Stop taking new orders after this many seconds; the rest waits for the next run.",
    )
    mode: Literal["auto", "per_order", "batched"] = Field(
        "auto",
        description=(
            "per_order: one transaction per order, sleeping between orders (the original's pace). "
            "batched: claim, verify and flip batch_size orders per transaction, sleeping between batches; "
            "a database error in a batch falls back to per_order for it. "
            "auto: batched when sleep is 0 and no provider verification is configured, else per_order."
        ),
    )

    @model_validator(mode="after")
    def _ordered_bounds(self) -> RunOptions:
        if self.since and self.until and d.as_naive_utc(self.since) >= d.as_naive_utc(self.until):
            raise ValueError("since must be earlier than until")
        return self

    @classmethod
    def parse(cls, **values: Any) -> RunOptions:
        """Validate, naming every offending field (never its value) in one ConfigurationError."""
        return validate_or_explain(cls, values, "run options")

    def bounds_history(self) -> bool:
        """Whether a lookback, ``since`` or ``until`` leaves part of the payment history out."""
        return self.lookback_hours is not None or self.since is not None or self.until is not None

    def window(self, now: dt.datetime) -> d.ScanWindow:
        return d.ScanWindow(
            now=now,
            min_age_minutes=self.min_age_minutes,
            lookback_hours=self.lookback_hours,
            since=self.since,
            until=self.until,
        )


@dataclass(frozen=True)
class OrderOutcome:
    order_id: Any
    action: str
    reason: str
    transaction_id: Any = None
    attempt: int = 0

    @property
    def acted(self) -> bool:
        """Whether this outcome counts against the run's limit (a lock held elsewhere does not)."""
        return not (self.action == tb.SKIPPED and self.reason == LOCKED_ELSEWHERE)


@dataclass
class RunSummary:
    run_id: str
    dry_run: bool = False
    found: int = 0
    oldest_orphan_age_minutes: float = 0.0
    aged_out: int = 0
    processed: int = 0
    regularized: int = 0
    would_regularize: int = 0
    skipped: int = 0
    failed: int = 0
    quarantined: int = 0
    inconsistent: int = 0
    inconsistent_by_kind: dict[str, int] = field(default_factory=dict)
    stopped_by_deadline: bool = False
    stopped_by_provider: bool = False
    elapsed_seconds: float = 0.0
    outcomes: list[OrderOutcome] = field(default_factory=list)

    def record(self, outcome: OrderOutcome) -> None:
        self.outcomes.append(outcome)
        if outcome.acted:
            self.processed += 1
        counter = {
            tb.REGULARIZED: "regularized",
            tb.DRY_RUN: "would_regularize",
            tb.SKIPPED: "skipped",
            tb.FAILED: "failed",
            tb.QUARANTINED: "quarantined",
            tb.INCONSISTENT: "inconsistent",
        }[outcome.action]
        setattr(self, counter, getattr(self, counter) + 1)
        if outcome.action == tb.INCONSISTENT and outcome.reason.startswith(d.PROVIDER_FAILED):
            self.inconsistent_by_kind[d.PROVIDER_FAILED] = (
                self.inconsistent_by_kind.get(d.PROVIDER_FAILED, 0) + 1
            )

    @property
    def error_rate(self) -> float:
        return (
            round((self.failed + self.quarantined) / self.processed, 4) if self.processed else 0.0
        )

    def as_metrics(self) -> dict[str, float | int]:
        """Numeric figures with stable keys, for Dagster metadata and the CLI table."""
        metrics: dict[str, float | int] = {
            "orphans_found": self.found,
            "oldest_orphan_age_minutes": self.oldest_orphan_age_minutes,
            "aged_out": self.aged_out,
            "processed": self.processed,
            "regularized": self.regularized,
            "would_regularize": self.would_regularize,
            "skipped": self.skipped,
            "failed": self.failed,
            "quarantined": self.quarantined,
            "inconsistent": self.inconsistent,
            "error_rate": self.error_rate,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }
        for kind in d.INCONSISTENCY_KINDS:
            metrics[f"inconsistent_{kind}"] = self.inconsistent_by_kind.get(kind, 0)
        return metrics


class Fault(Exception):
    """Raised by test fault hooks; never by production code."""


# Called with (point, order id) at the points a crash would hurt most; tests raise from
# it to prove a crash anywhere leaves nothing behind, and pick one order by its id.
FaultHook = Callable[[str, Any], None]
ProgressHook = Callable[[OrderOutcome, RunSummary, int], None]


def _no_fault(_point: str, _order_id: Any) -> None:
    return None


class Regularizer:
    """Runs the regularization of orphaned orders against one application database."""

    def __init__(
        self,
        engine: sa.Engine,
        schema: AppSchema,
        *,
        clock: Callable[[], dt.datetime] = d.utcnow,
        sleeper: Callable[[float], None] = time.sleep,
        fault: FaultHook = _no_fault,
        verifier: PaymentVerifier | None = None,
    ):
        self.engine = engine
        self.verifier = verifier
        self.schema = schema
        self.tables = tb.owned_tables(schema.mapping.table_prefix)
        self.clock = clock
        self.sleeper = sleeper
        self.fault = fault
        self._skip_locked = supports_skip_locked(engine)

    # --- a run ---------------------------------------------------------------------

    def run(
        self, options: RunOptions, run_id: str | None = None, progress: ProgressHook | None = None
    ) -> RunSummary:
        """Detect, then regularize up to ``options.limit`` orders, one transaction each."""
        require_migrated(self.engine, self.schema.mapping.table_prefix)
        run_id = run_id or str(uuid.uuid4())
        started = time.monotonic()
        deadline = started + options.max_runtime_seconds if options.max_runtime_seconds else None
        window = options.window(self.clock())
        summary = RunSummary(run_id=run_id, dry_run=options.dry_run)

        with self.engine.connect() as conn:
            stats = d.orphan_stats(conn, self.schema, window, sample_size=0)
        report = self._inconsistencies(options, window)
        summary.found, summary.aged_out = stats.count, stats.aged_out
        summary.oldest_orphan_age_minutes = stats.oldest_age_minutes
        summary.inconsistent_by_kind = dict(report.counts)
        if not options.dry_run:
            self._audit_new_inconsistencies(report, run_id)
        log.info(
            "run %s: %d orphan(s) found, %d inconsistency(ies), limit %d",
            run_id,
            stats.count,
            report.total,
            options.limit,
        )

        if self._batched(options):
            self._run_batches(options, run_id, window, summary, deadline, progress)
            summary.elapsed_seconds = time.monotonic() - started
            return summary
        rest_before_next = False
        for page in d.candidate_pages(self.engine, self.schema, window, options.batch_size):
            for order_id in self._without_quarantined(page):
                if summary.processed >= options.limit:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    summary.stopped_by_deadline = True
                    break
                if rest_before_next and options.sleep:
                    self.sleeper(options.sleep)
                outcome = self.regularize_one(order_id, run_id, options, window)
                summary.record(outcome)
                rest_before_next = outcome.acted
                if progress:
                    progress(outcome, summary, options.limit)
                if outcome.reason.startswith(PROVIDER_UNAVAILABLE):
                    # Every further order would wait out the same timeouts: stop, retry next run.
                    summary.stopped_by_provider = True
                    break
            else:
                continue
            break
        summary.elapsed_seconds = time.monotonic() - started
        return summary

    def _inconsistencies(self, options: RunOptions, window: d.ScanWindow) -> d.InconsistencyReport:
        """Every id, not a sample: an inconsistency past a sample would never be audited.

        The whole history comes from the tracker, which re-examines only what may
        have changed; a bounded window, or a dry run (which writes nothing of ours
        either), is scanned as asked.
        """
        if options.bounds_history() or options.dry_run:
            with self.engine.connect() as conn:
                return with_provider_failures(
                    conn,
                    self.schema,
                    d.inconsistency_report(conn, self.schema, window, sample_size=None),
                )
        return InconsistencyTracker(self.engine, self.schema, clock=self.clock).refresh()

    def _batched(self, options: RunOptions) -> bool:
        if options.mode == "auto":
            return options.sleep == 0 and self.verifier is None
        if options.mode == "batched" and self.verifier is not None:
            # The provider is asked before any lock is taken, one order at a time.
            raise ConfigurationError(
                "mode 'batched' cannot be combined with provider verification; use per_order or auto"
            )
        return options.mode == "batched"

    # --- batches -----------------------------------------------------------------------

    def _run_batches(
        self,
        options: RunOptions,
        run_id: str,
        window: d.ScanWindow,
        summary: RunSummary,
        deadline: float | None,
        progress: ProgressHook | None,
    ) -> None:
        last = None
        slice_size = options.batch_size * CLAIM_SCAN_FACTOR
        while summary.processed < options.limit:
            if deadline is not None and time.monotonic() >= deadline:
                summary.stopped_by_deadline = True
                return
            size = min(options.batch_size, options.limit - summary.processed)
            try:
                with self.engine.begin() as conn:
                    outcomes, scanned_to = self._decide_batch(
                        conn, run_id, window, last, size, slice_size, options.dry_run
                    )
                # One line per batch: where python_logs manages this logger, every line is a
                # write to Dagster's event log, and a line per order outweighs the orders.
                # (regularize_one logs the fallback's own outcomes.)
                for outcome in outcomes:
                    log.debug("order %s: %s (%s)", outcome.order_id, outcome.action, outcome.reason)
                acted = Counter(outcome.action for outcome in outcomes)
                if outcomes:
                    log.info(
                        "run %s: batch of %d up to order %s: %s",
                        run_id,
                        len(outcomes),
                        outcomes[-1].order_id,
                        ", ".join(f"{n} {action}" for action, n in sorted(acted.items())),
                    )
            except Exception as exc:  # the batch rolled back whole: decide its orders one by one
                log.warning(
                    "run %s: batch after order %s failed (%s): falling back to one order at a time",
                    run_id,
                    last,
                    describe_error(exc),
                )
                page = next(
                    d.candidate_pages(self.engine, self.schema, window, size, after=last), []
                )
                outcomes = [
                    self.regularize_one(order_id, run_id, options, window)
                    for order_id in self._without_quarantined(page)
                ]
                scanned_to = page[-1] if page else None
            if scanned_to is None:  # no pending order left to look at
                return
            last = scanned_to
            # Pending orders waiting for their customer can outnumber the orphans many times
            # over: a slice that did not fill the batch doubles the next one, so crossing
            # them takes a few claims instead of one per slice.
            full = len(outcomes) == size
            slice_size = size * CLAIM_SCAN_FACTOR if full else min(slice_size * 2, MAX_CLAIM_SLICE)
            for outcome in outcomes:
                summary.record(outcome)
                if progress:
                    progress(outcome, summary, options.limit)
            if options.sleep and summary.processed < options.limit:
                self.sleeper(options.sleep)

    def _claim_batch(
        self, conn: sa.Connection, window: d.ScanWindow, after: Any, size: int, slice_size: int
    ) -> tuple[list[OrderRow], Any]:
        """Lock the next regularizable, unquarantined orders; rows another run holds are skipped, not waited for.

        Returns the locked orders as read under their locks (a locking read sees the
        latest committed row) and how far the scan went (None once no pending order is
        left): the candidates are looked for within the next ``slice_size`` pending
        orders, so a slice with none, or all held by another run, moves the scan on.
        """
        s, at = self.schema, self.tables.attempts
        pending = d.pending_ids_after(s, after, slice_size).subquery()
        slice_end = conn.execute(sa.select(sa.func.max(pending.c[0]))).scalar()
        if slice_end is None:
            return [], None
        in_slice = (
            [s.o("id") <= slice_end]
            if after is None
            else [s.o("id") > after, s.o("id") <= slice_end]
        )
        quarantined = sa.exists().where(
            at.c.order_id == sa.cast(s.o("id"), sa.String), at.c.quarantined_at.is_not(None)
        )
        query = (
            sa.select(*self._sql.order_columns)
            .where(*in_slice, d.regularizable_condition(s, window), ~quarantined)
            .order_by(s.o("id"))
            .limit(size)
        )
        if self._skip_locked:
            query = query.with_for_update(skip_locked=True)
        claimed = [OrderRow(*row) for row in conn.execute(query)]
        # A full batch may have left candidates in the slice: go on from the last one taken.
        return claimed, (claimed[-1].id if len(claimed) == size else slice_end)

    def _decide_batch(
        self,
        conn: sa.Connection,
        run_id: str,
        window: d.ScanWindow,
        after: Any,
        size: int,
        slice_size: int,
        dry_run: bool,
    ) -> tuple[list[OrderOutcome], list]:
        """Claim, verify, flip, event and audit a batch in the caller's transaction."""
        s = self.schema
        claimed, scanned_to = self._claim_batch(conn, window, after, size, slice_size)
        if not claimed:
            return [], scanned_to
        ids = [order.id for order in claimed]
        self._fault_each("after_lock", ids)
        payments: dict[Any, list[TransactionRow]] = {}
        for order_id, tx in self._transactions_of(conn, ids):
            payments.setdefault(order_id, []).append(tx)
        now = self.clock()
        decided = []
        for order in claimed:
            verdict = verify(order, payments.get(order.id, []), s.statuses, window)
            if dry_run and verdict.action == tb.REGULARIZED:
                verdict = Verdict(
                    tb.DRY_RUN, "would regularize: " + verdict.reason, verdict.transaction
                )
            decided.append((order, verdict))

        flip = [order.id for order, verdict in decided if verdict.action == tb.REGULARIZED]
        if flip:
            values = {s.mapping.orders.status: s.statuses.order_completed}
            if s.has_o("updated_at"):
                values[s.mapping.orders.updated_at] = now
            flipped = conn.execute(
                s.orders.update()
                .where(s.o("id").in_(flip), s.o("status").in_(s.statuses.order_pending))
                .values(values)
            ).rowcount
            if flipped != len(flip):
                # Only reachable without row locks; the per-order fallback sorts out which one moved.
                raise RuntimeError(
                    f"{len(flip) - flipped} order(s) of the batch changed before the flip"
                )
            self._fault_each("after_flip", flip)
            events = []
            for order, verdict in decided:
                if verdict.action == tb.REGULARIZED:
                    tx = verdict.transaction
                    events.append(
                        outbox_row(
                            new_event(
                                order.id,
                                tx.id,
                                tx.amount,
                                tx.currency or order.currency,
                                run_id,
                                now,
                            ),
                            now,
                        )
                    )
            insert_many(conn, self.tables.outbox, events)
            self._fault_each("after_outbox", flip)
            at = self.tables.attempts
            conn.execute(
                at.update()
                .where(at.c.order_id.in_([str(i) for i in flip]))
                .values(
                    failures=0,
                    total_attempts=at.c.total_attempts + 1,
                    last_outcome=tb.REGULARIZED,
                    last_reason="completed transaction verified",
                    last_run_id=run_id,
                    updated_at=now,
                )
            )
        for order, verdict in decided:
            if verdict.action == tb.INCONSISTENT and not dry_run:
                self._note_attempt(
                    conn, order.id, run_id, tb.INCONSISTENT, verdict.reason, failed=False
                )
        insert_many(
            conn,
            self.tables.audit,
            [self._audit_values(run_id, o.id, v, o, now) for o, v in decided],
        )
        self._fault_each("before_commit", ids)
        tx_of = lambda v: None if v.transaction is None else v.transaction.id  # noqa: E731
        return [OrderOutcome(o.id, v.action, v.reason, tx_of(v)) for o, v in decided], scanned_to

    def _fault_each(self, point: str, order_ids: list) -> None:
        # The per-order fault points, so every crash test holds for batches too.
        for order_id in order_ids:
            self.fault(point, order_id)

    def _without_quarantined(self, page: list) -> list:
        at = self.tables.attempts
        with self.engine.connect() as conn:
            held = set(
                conn.execute(
                    sa.select(at.c.order_id).where(
                        at.c.order_id.in_([str(i) for i in page]), at.c.quarantined_at.is_not(None)
                    )
                ).scalars()
            )
        return [i for i in page if str(i) not in held]

    # --- one order -------------------------------------------------------------------

    def regularize_one(
        self, order_id: Any, run_id: str, options: RunOptions, window: d.ScanWindow | None = None
    ) -> OrderOutcome:
        """Decide one order in its own transaction; a failure is counted, never raised."""
        window = window or options.window(self.clock())
        try:
            # Outside any transaction: a test can play the late webhook here, between the scan and the claim.
            self.fault("before_claim", order_id)
            answer = self._ask_provider(order_id, window) if self.verifier else None
            outcome = self._decide_retrying_deadlocks(
                order_id, run_id, options.dry_run, window, answer
            )
        except ProviderRejectedError:
            raise  # a bad token or URL: every order would fail the same way, so the run stops
        except ProviderUnavailableError as exc:
            return self._left_for_next_run(order_id, run_id, exc, options.dry_run)
        except sa.exc.DataError as exc:
            if self._is_order_key(order_id):
                return self._record_failure(
                    order_id, run_id, exc, options.max_attempts, options.dry_run
                )
            # Not even a value of the orders' key ("abc" for an integer id, PostgreSQL): no such
            # order, as SQLite and MariaDB answer; not a failure to count, nor to quarantine.
            with self.engine.begin() as conn:
                return self._audit(
                    conn,
                    run_id,
                    order_id,
                    Verdict(tb.SKIPPED, "order not found"),
                    None,
                    options.dry_run,
                )
        except Exception as exc:  # one bad order never stops the run
            return self._record_failure(
                order_id, run_id, exc, options.max_attempts, options.dry_run
            )
        if outcome.action != tb.SKIPPED or outcome.reason != LOCKED_ELSEWHERE:
            log.info("order %s: %s (%s)", order_id, outcome.action, outcome.reason)
        return outcome

    def _is_order_key(self, order_id: Any) -> bool:
        """Whether the database takes ``order_id`` as a value of the orders' key at all."""
        try:
            with self.engine.connect() as conn:
                conn.execute(self._sql.exists, {"p_order": order_id})
        except sa.exc.DataError:
            return False
        return True

    def _decide_retrying_deadlocks(
        self,
        order_id: Any,
        run_id: str,
        dry_run: bool,
        window: d.ScanWindow,
        answer: tuple[Any, ProviderAnswer] | None,
    ) -> OrderOutcome:
        """The order's transaction, tried again when the database chose it as a deadlock victim.

        A deadlock (or serialization failure) rolled the whole transaction back, so trying
        again is safe, and the other side (often the application's own webhook) has moved on.
        A lock wait timeout is not retried: someone holds the row, and waiting again would
        only hold up the run.
        """
        for attempt in range(DEADLOCK_RETRIES + 1):
            try:
                with self.engine.begin() as conn:
                    return self._decide(conn, order_id, run_id, dry_run, window, answer)
            except sa.exc.DBAPIError as exc:
                if attempt == DEADLOCK_RETRIES or not is_deadlock(exc):
                    raise
                log.info(
                    "order %s: deadlock victim, trying again (%d/%d)",
                    order_id,
                    attempt + 1,
                    DEADLOCK_RETRIES,
                )
                self.sleeper(DEADLOCK_BACKOFF_SECONDS * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    @cached_property
    def _sql(self) -> SimpleNamespace:
        """The per-order statements, built once with bind parameters.

        Rebuilding a statement for every order cost more Python time than the
        database spent running it; built once, SQLAlchemy reuses its compiled form.
        """
        s, at = self.schema, self.tables.attempts
        order_cols = [
            s.o("id"),
            s.o("status"),
            s.o("total"),
            s.o("currency") if s.has_o("currency") else sa.null(),
            s.o("deleted_at") if s.has_o("deleted_at") else sa.null(),
        ]
        tx_cols = [
            s.t("order_id"),
            s.t("id"),
            s.t("status"),
            s.t("amount"),
            s.t("currency") if s.has_t("currency") else sa.null(),
            s.tx_completed_at,
            s.t("reference") if s.has_t("reference") else sa.null(),
        ]
        one_order = sa.select(*order_cols).where(s.o("id") == sa.bindparam("p_order"))
        flip_values = {s.mapping.orders.status: s.statuses.order_completed}
        if s.has_o("updated_at"):
            flip_values[s.mapping.orders.updated_at] = sa.bindparam("p_now")
        return SimpleNamespace(
            order=one_order,
            lock=one_order.with_for_update(skip_locked=True) if self._skip_locked else one_order,
            order_columns=order_cols,
            payments=sa.select(*tx_cols)
            .where(s.t("order_id").in_(sa.bindparam("p_orders", expanding=True)))
            .order_by(s.t("order_id"), s.t("id")),
            exists=sa.select(s.o("id")).where(s.o("id") == sa.bindparam("p_order")),
            flip=s.orders.update()
            .where(
                s.o("id") == sa.bindparam("p_order"), s.o("status").in_(s.statuses.order_pending)
            )
            .values(flip_values),
            reset_attempts=at.update()
            .where(at.c.order_id == sa.bindparam("p_key"))
            .values(
                failures=0,
                total_attempts=at.c.total_attempts + 1,
                last_outcome=tb.REGULARIZED,
                last_reason=sa.bindparam("p_reason"),
                last_run_id=sa.bindparam("p_run"),
                updated_at=sa.bindparam("p_now"),
            ),
        )

    def _load_order(self, conn: sa.Connection, order_id: Any, *, lock: bool) -> OrderRow | None:
        row = conn.execute(
            self._sql.lock if lock else self._sql.order, {"p_order": order_id}
        ).first()
        return OrderRow(*row) if row is not None and same_order_id(row[0], order_id) else None

    def _transactions_of(
        self, conn: sa.Connection, order_ids: list
    ) -> list[tuple[Any, TransactionRow]]:
        """(order id, payment) for every transaction of the orders, in transaction id order."""
        rows = conn.execute(self._sql.payments, {"p_orders": list(order_ids)}).all()
        return [
            (r[0], TransactionRow(r[1], r[2], r[3], r[4], d._to_datetime(r[5]), r[6])) for r in rows
        ]

    def _transactions(self, conn: sa.Connection, order_id: Any) -> list[TransactionRow]:
        return [tx for _order, tx in self._transactions_of(conn, [order_id])]

    def _ask_provider(
        self, order_id: Any, window: d.ScanWindow
    ) -> tuple[Any, ProviderAnswer] | None:
        """Ask the provider before taking the row lock, so no lock waits on the network.

        Returns (transaction id, answer) when the database alone would
        regularize the order; the locked decision then checks that the same
        transaction is still the completed one.
        """
        with self.engine.connect() as conn:
            order = self._load_order(conn, order_id, lock=False)
            if order is None:
                return None
            verdict = verify(
                order, self._transactions(conn, order_id), self.schema.statuses, window
            )
        if verdict.action != tb.REGULARIZED:
            return None
        return verdict.transaction.id, self.verifier.check(order, verdict.transaction)

    def _decide(
        self,
        conn: sa.Connection,
        order_id: Any,
        run_id: str,
        dry_run: bool,
        window: d.ScanWindow,
        answer: tuple[Any, ProviderAnswer] | None = None,
    ) -> OrderOutcome:
        order = self._load_order(conn, order_id, lock=True)
        if order is None:
            found = conn.execute(self._sql.exists, {"p_order": order_id}).first()
            gone = found is None or not same_order_id(found[0], order_id)
            if gone:
                return self._audit(
                    conn, run_id, order_id, Verdict(tb.SKIPPED, "order not found"), None, dry_run
                )
            return OrderOutcome(order_id, tb.SKIPPED, LOCKED_ELSEWHERE)
        self.fault("after_lock", order_id)
        verdict = verify(order, self._transactions(conn, order_id), self.schema.statuses, window)
        if verdict.action == tb.REGULARIZED and self.verifier is not None:
            if answer is None or answer[0] != verdict.transaction.id:
                verdict = Verdict(
                    tb.SKIPPED,
                    "transaction changed since the provider was asked: left for the next run",
                )
            else:
                verdict = apply_provider_answer(verdict, answer[1])
        if verdict.action != tb.REGULARIZED:
            if verdict.action == tb.INCONSISTENT and not dry_run:
                # The provider says the payment failed or was refunded: a human decides, so the
                # order is held instead of asked about (and audited) again every five minutes.
                self._note_attempt(
                    conn,
                    order_id,
                    run_id,
                    tb.INCONSISTENT,
                    verdict.reason,
                    failed=False,
                    hold=verdict.reason.startswith(f"{d.PROVIDER_FAILED}:"),
                )
            return self._audit(conn, run_id, order_id, verdict, order, dry_run)
        if dry_run:
            return self._audit(
                conn,
                run_id,
                order_id,
                Verdict(tb.DRY_RUN, "would regularize: " + verdict.reason, verdict.transaction),
                order,
                dry_run,
            )

        now = self.clock()
        flipped = conn.execute(self._sql.flip, {"p_order": order_id, "p_now": now}).rowcount
        if flipped != 1:
            # Only reachable without row locks: a concurrent writer completed it first.
            return self._audit(
                conn,
                run_id,
                order_id,
                Verdict(tb.SKIPPED, "order changed before the flip (late webhook)"),
                order,
                dry_run,
            )
        self.fault("after_flip", order_id)
        tx = verdict.transaction
        event = new_event(order.id, tx.id, tx.amount, tx.currency or order.currency, run_id, now)
        conn.execute(self.tables.outbox.insert(), outbox_row(event, now))
        self.fault("after_outbox", order_id)
        outcome = self._audit(conn, run_id, order_id, verdict, order, dry_run)
        conn.execute(
            self._sql.reset_attempts,
            {"p_key": str(order_id), "p_reason": verdict.reason, "p_run": run_id, "p_now": now},
        )
        self.fault("before_commit", order_id)
        return outcome

    def _audit(
        self,
        conn: sa.Connection,
        run_id: str,
        order_id: Any,
        verdict: Verdict,
        order: OrderRow | None,
        dry_run: bool,
        attempt: int = 0,
    ) -> OrderOutcome:
        if dry_run and verdict.action == tb.REGULARIZED:
            verdict = Verdict(tb.DRY_RUN, verdict.reason, verdict.transaction)
        conn.execute(
            self.tables.audit.insert(),
            self._audit_values(run_id, order_id, verdict, order, self.clock(), attempt),
        )
        tx = verdict.transaction
        return OrderOutcome(
            order_id, verdict.action, verdict.reason, None if tx is None else tx.id, attempt
        )

    def _audit_values(
        self,
        run_id: str,
        order_id: Any,
        verdict: Verdict,
        order: OrderRow | None,
        now: dt.datetime,
        attempt: int = 0,
    ) -> dict[str, Any]:
        tx = verdict.transaction
        return fit_to_columns(
            self.tables.audit,
            dict(
                run_id=run_id,
                order_id=str(order_id),
                transaction_id=None if tx is None else str(tx.id),
                action=verdict.action,
                reason=verdict.reason,
                attempt=attempt,
                order_status=None if order is None else order.status,
                order_amount=_money(order.total) if order else None,
                transaction_amount=_money(tx.amount) if tx else None,
                currency=(
                    tx.currency if tx and tx.currency else (order.currency if order else None)
                ),
                transaction_completed_at=tx.completed_at if tx else None,
                created_at=now,
            ),
        )

    # --- attempts, failures and quarantine ---------------------------------------------

    def _note_attempt(
        self,
        conn: sa.Connection,
        order_id: Any,
        run_id: str,
        outcome: str,
        reason: str,
        *,
        failed: bool,
        max_attempts: int | None = None,
        hold: bool = False,
    ) -> tuple[int, bool]:
        """Count an attempt on the order; returns (total attempts, quarantined now).

        ``hold`` quarantines the order whatever its failures: runs skip it until ``release``.
        """
        at, now = self.tables.attempts, self.clock()
        key = str(order_id)
        # Create the row if absent, then lock it: "select, insert when missing" let two
        # overlapping workers both insert (one failure lost to a unique violation) and, on
        # InnoDB, deadlock on the gap lock of the missing row.
        self._ensure_attempts_row(conn, key, outcome, now)
        query = sa.select(at.c.failures, at.c.total_attempts).where(at.c.order_id == key)
        if self._skip_locked:
            query = query.with_for_update()
        current = conn.execute(query).one()
        failures = current.failures + (1 if failed else 0)
        total = current.total_attempts + 1
        quarantine = failed and max_attempts is not None and failures >= max_attempts
        values = dict(
            failures=failures,
            total_attempts=total,
            last_outcome=outcome,
            last_reason=reason[:500],
            last_run_id=run_id,
            updated_at=now,
        )
        if quarantine or hold:
            values["quarantined_at"] = now
        conn.execute(at.update().where(at.c.order_id == key).values(**values))
        return total, quarantine

    def _ensure_attempts_row(
        self, conn: sa.Connection, key: str, outcome: str, now: dt.datetime
    ) -> None:
        at = self.tables.attempts
        values = dict(
            order_id=key, failures=0, total_attempts=0, last_outcome=outcome, updated_at=now
        )
        dialect = conn.dialect.name
        if dialect == "postgresql":
            stmt = (
                postgresql.insert(at)
                .values(values)
                .on_conflict_do_nothing(index_elements=[at.c.order_id])
            )
        elif dialect in ("mysql", "mariadb"):
            # A no-op update rather than INSERT IGNORE: it takes the row's exclusive lock at
            # once, where IGNORE's shared lock would deadlock with the FOR UPDATE that follows.
            stmt = mysql.insert(at).values(values).on_duplicate_key_update(order_id=at.c.order_id)
        else:  # SQLite: the transaction already holds the database's write lock
            stmt = (
                sqlite.insert(at)
                .values(values)
                .on_conflict_do_nothing(index_elements=[at.c.order_id])
            )
        conn.execute(stmt)

    def _left_for_next_run(
        self, order_id: Any, run_id: str, exc: Exception, dry_run: bool
    ) -> OrderOutcome:
        """Audit an order the provider could not answer for, without counting it as the order's failure."""
        reason = f"{PROVIDER_UNAVAILABLE} ({describe_error(exc)})"
        log.warning("order %s: %s", order_id, reason)
        with self.engine.begin() as conn:
            return self._audit(conn, run_id, order_id, Verdict(tb.SKIPPED, reason), None, dry_run)

    def _record_failure(
        self, order_id: Any, run_id: str, exc: Exception, max_attempts: int, dry_run: bool
    ) -> OrderOutcome:
        reason = describe_error(exc)
        log.warning("order %s: failed: %s", order_id, reason)
        if dry_run:
            return OrderOutcome(order_id, tb.FAILED, reason)
        try:
            with self.engine.begin() as conn:
                attempt, quarantined = self._note_attempt(
                    conn,
                    order_id,
                    run_id,
                    tb.FAILED,
                    reason,
                    failed=True,
                    max_attempts=max_attempts,
                )
                action = tb.QUARANTINED if quarantined else tb.FAILED
                if quarantined:
                    reason = f"quarantined after {max_attempts} failed attempt(s); last: {reason}"
                return self._audit(
                    conn, run_id, order_id, Verdict(action, reason), None, dry_run, attempt=attempt
                )
        except Exception as second:  # the database itself is failing
            log.error(
                "order %s: could not record the failure: %s", order_id, describe_error(second)
            )
            # Gone, not just failing: every later order would fail the same way, so the run
            # stops here with DatabaseUnavailableError and the rest waits for the next run.
            check_reachable(self.engine)
            return OrderOutcome(order_id, tb.FAILED, reason)

    def _audit_new_inconsistencies(self, report: d.InconsistencyReport, run_id: str) -> None:
        """Audit each standing inconsistency once per order and kind, when first seen.

        The audit trail itself is the memory: an order can carry two kinds at
        once (an amount mismatch that is also a double charge), so remembering
        only the last kind would audit both again on every run.
        """
        for kind, ids in report.order_ids.items():
            for start in range(0, len(ids), 500):  # bounded IN lists and transactions
                try:
                    self._audit_inconsistency_batch(kind, ids[start : start + 500], run_id)
                except (
                    Exception
                ) as exc:  # an overlapping run wrote the same rows first: not worth the run
                    log.warning(
                        "run %s: could not audit %s inconsistencies: %s",
                        run_id,
                        kind,
                        describe_error(exc),
                    )

    def _audit_inconsistency_batch(self, kind: str, ids: list, run_id: str) -> None:
        au = self.tables.audit
        with self.engine.begin() as conn:
            seen = set(
                conn.execute(
                    sa.select(au.c.order_id).where(
                        au.c.order_id.in_([str(i) for i in ids]),
                        au.c.action == tb.INCONSISTENT,
                        au.c.reason.startswith(f"{kind}:", autoescape=True),
                    )
                ).scalars()
            )
            for order_id in ids:
                if str(order_id) in seen:
                    continue
                reason = f"{kind}: reported, not fixed"
                self._note_attempt(conn, order_id, run_id, tb.INCONSISTENT, reason, failed=False)
                self._audit(
                    conn, run_id, order_id, Verdict(tb.INCONSISTENT, reason), None, dry_run=False
                )

    # --- operator tools ----------------------------------------------------------------

    def release(self, order_id: Any, run_id: str = "operator") -> None:
        """Lift an order's quarantine and reset its failure count."""
        at = self.tables.attempts
        with self.engine.begin() as conn:
            released = conn.execute(
                at.update()
                .where(at.c.order_id == str(order_id), at.c.quarantined_at.is_not(None))
                .values(
                    quarantined_at=None,
                    failures=0,
                    updated_at=self.clock(),
                    last_outcome=tb.RELEASED,
                )
            ).rowcount
            if not released:
                raise ConfigurationError(f"order {order_id} is not quarantined")
            self._audit(
                conn,
                run_id,
                order_id,
                Verdict(tb.RELEASED, "released from quarantine by an operator"),
                None,
                dry_run=False,
            )


# How many pending orders a batch claim looks through per order it may take: orphans are
# a minority of pending orders (most wait for their customer), so a slice of a few times
# the batch usually fills it, and a slice without any just moves the scan on.
CLAIM_SCAN_FACTOR = 4
MAX_CLAIM_SLICE = 100_000
DEADLOCK_RETRIES = 2
DEADLOCK_BACKOFF_SECONDS = 0.05
_DEADLOCK_SQLSTATES = {"40P01", "40001"}  # PostgreSQL: deadlock_detected, serialization_failure
_DEADLOCK_MYSQL_ERRORS = {1213}  # ER_LOCK_DEADLOCK


def is_deadlock(exc: sa.exc.DBAPIError) -> bool:
    """Whether the database rolled the transaction back to break a deadlock."""
    orig = exc.orig
    if getattr(orig, "pgcode", None) in _DEADLOCK_SQLSTATES:
        return True
    args = getattr(orig, "args", ())
    return bool(args) and args[0] in _DEADLOCK_MYSQL_ERRORS


def same_order_id(stored: Any, given: Any) -> bool:
    """Whether the row found is the order asked for, exactly.

    MySQL/MariaDB compare a string with an integer column as a number: asked for
    order '1; DROP TABLE orders', they return order 1. Bound parameters make that
    harmless as SQL, but acting on order 1 would still be wrong.
    """
    return str(stored) == str(given)


def fit_to_columns(table: sa.Table, values: dict[str, Any]) -> dict[str, Any]:
    """Cut strings to their column's length: the application's values (a status, a currency)
    are not ours to bound, and the audit of an odd order must not fail for its length."""
    fitted = dict(values)
    for name, length in _string_lengths(table).items():
        value = values.get(name)
        if isinstance(value, str) and len(value) > length:
            fitted[name] = value[:length]
    return fitted


@lru_cache(maxsize=64)
def _string_lengths(table: sa.Table) -> dict[str, int]:
    # Read once per table: a batch fits thousands of rows.
    return {c.name: c.type.length for c in table.c if getattr(c.type, "length", None)}


def _money(value: Any):
    amount = to_decimal(value)
    # Keep the audit insert valid whatever the application stored.
    return amount if amount is not None and abs(amount) < 10**14 else None


# What a database's own message can quote of the application's data: a duplicate key
# ("Duplicate entry 'jane@example.com'"), a value that did not parse, a trigger's text.
# PostgreSQL quotes a value after a colon (`invalid input syntax for type integer: "x"`) and
# names (`database "shop"`) without one: the names stay, they are what an operator needs.
_QUOTED = re.compile(r"'[^']*'|(?<=: )\"[^\"]*\"")
_EMAIL = re.compile(r"[^\s@,;:()]+@[^\s@,;:()]+")
_DIGIT_RUN = re.compile(r"\d(?:[ -]?\d){8,}")  # card and account numbers, phone numbers


def redact(text: str) -> str:
    """``text`` without quoted values, e-mail addresses or long digit runs."""
    return _DIGIT_RUN.sub("#", _EMAIL.sub("<e-mail>", _QUOTED.sub("'…'", text)))


def describe_error(exc: BaseException) -> str:
    """The error class, the database's error code, and the first line of its message, redacted.

    Engines hide bound parameters, but a database's message can still quote the
    data it choked on; this text goes to logs, the audit trail and the UI.
    """
    orig = getattr(exc, "orig", None)
    name = type(exc).__name__ + (
        f" ({type(orig).__module__}.{type(orig).__name__})" if orig is not None else ""
    )
    args = getattr(orig, "args", ())
    mysql_code = (
        args[0] if len(args) == 2 and isinstance(args[0], int) else None
    )  # PyMySQL: (errno, message)
    code = getattr(orig, "pgcode", None) or mysql_code
    if code is not None:
        name += f" [{code}]"
    text = str(args[1] if mysql_code is not None else orig if orig is not None else exc).strip()
    first = redact(text.splitlines()[0]) if text else ""
    return f"{name}: {first}"[:480] if first else name
