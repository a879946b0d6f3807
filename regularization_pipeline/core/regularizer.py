"""The regularization of orphaned orders: a run.

A run surveys the shop (orphans, inconsistencies), then decides up to ``limit``
orders, either one transaction per order (the original's pace, ``sleep``
seconds apart; :mod:`~regularization_pipeline.core.decisions.one_order`: lock,
re-read, verify, write, commit) or ``batch_size`` orders per transaction
(:mod:`~regularization_pipeline.core.decisions.batching`), falling back to one
order at a time when a batch fails. Both write through
:func:`regularization_pipeline.core.decisions.writes.write_decisions`: the
compare-and-set flip, the outbox row, the attempts and audit rows.

A late webhook that completed the order first makes the re-read or the flip find
it completed: the order is skipped and no event is written. Any exception rolls
the whole order back; the failure is then counted
(:mod:`~regularization_pipeline.core.decisions.attempts`) and, after ``max_attempts``,
the order is quarantined.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.decisions import attempts, batching, pending_payments
from regularization_pipeline.core.decisions.context import (
    FaultHook,
    OrderOutcome,
    OrderStatements,
    RunContext,
    no_fault,
)
from regularization_pipeline.core.decisions.one_order import OneOrder, OrderConnection
from regularization_pipeline.core.decisions.provider_health import (
    DEFAULT_OUTAGE_AFTER,
    ProviderHealth,
)
from regularization_pipeline.core.decisions.tracker import audit_new_inconsistencies, open_report
from regularization_pipeline.core.delivery.publishers import expand_publishers
from regularization_pipeline.core.delivery.transactional import TransactionalDelivery
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.detection.held import held_orders
from regularization_pipeline.core.detection.shop_rules import require_sound_shop
from regularization_pipeline.core.errors import ConfigurationError, describe_error
from regularization_pipeline.core.provider.answers import (
    PaymentVerifier,
    ProviderError,
)
from regularization_pipeline.core.run import ProgressHook, RunOptions, RunSummary
from regularization_pipeline.core.shop import run_lock
from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.core.shop.binding import AppSchema
from regularization_pipeline.core.shop.engine import require_capabilities
from regularization_pipeline.core.shop.migrations import require_migrated

__all__ = ["OrderOutcome", "Regularizer", "RunOptions", "RunSummary"]

log = logging.getLogger("regularization_pipeline.regularizer")

# The most orders a run reads from its queue at a time: each page is one pass over the
# pending orders' payments, so a large backlog is read in a few passes, not one per batch.
QUEUE_PAGE = 10_000


@dataclass
class _Pace:
    """When a run stops taking orders, and what it does after each one."""

    options: RunOptions
    summary: RunSummary
    progress: ProgressHook | None
    deadline: float | None
    # Raises RunLockLostError when the shop's run lock is gone; None when the run holds none.
    lock_held: Callable[[], None] | None = None
    # The survey's figures, whose sample is the first page of the run's queue.
    head: d.OrphanStats | None = None

    def out_of_time(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.summary.stopped_by_deadline = True
        return self.summary.stopped_by_deadline

    def has_room(self, pending: int = 0) -> bool:
        """Whether to decide another order; checked before each one (and each batch).

        ``pending``: orders decided but not recorded yet (provider errors awaiting the next answer).
        """
        if self.summary.processed + pending >= self.options.limit or self.out_of_time():
            return False
        if self.lock_held is not None:
            self.lock_held()  # a lost lock ends the run here, before the next decision
        return True

    def record(self, outcome: OrderOutcome) -> None:
        self.summary.record(outcome)
        if self.progress is not None:
            self.progress(outcome, self.summary, self.options.limit)


class Regularizer:
    """Runs the regularization of orphaned orders against one application database."""

    def __init__(
        self,
        engine: sa.Engine,
        schema: AppSchema,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        sleeper: Callable[[float], None] = time.sleep,
        fault: FaultHook = no_fault,
        verifier: PaymentVerifier | None = None,
        exclusive: bool = True,
        publishers: Sequence[Any] = (),
    ):
        """``exclusive=False`` skips the shop's run lock: only tests that force runs to overlap.

        ``publishers`` are the run's publishers; those that write in the flip's own transaction
        (Laravel's database queue) are called by the write step, the others by the dispatcher.
        """
        self.transactional = TransactionalDelivery.of(expand_publishers(publishers))
        self.engine = engine
        self.exclusive = exclusive
        self.verifier = verifier
        self.schema = schema
        self.tables = tb.owned_tables(schema.mapping.table_prefix)
        self.statements = OrderStatements(engine, schema, self.tables)
        self.clock = clock
        self.sleeper = sleeper
        self.fault = fault
        self.one = OneOrder(verifier, sleeper)

    def context(self, run_id: str, options: RunOptions, window: d.ScanWindow) -> RunContext:
        """What the steps of one run (or one operator action) share."""
        return RunContext(
            engine=self.engine,
            schema=self.schema,
            tables=self.tables,
            statements=self.statements,
            clock=self.clock,
            fault=self.fault,
            run_id=run_id,
            window=window,
            dry_run=options.dry_run,
            max_attempts=options.max_attempts,
            transactional=self.transactional,
        )

    # --- a run ---------------------------------------------------------------------------

    def run(
        self, options: RunOptions, run_id: str | None = None, progress: ProgressHook | None = None
    ) -> RunSummary:
        """Survey the shop, then regularize up to ``options.limit`` orders.

        Holds the shop's run lock (:mod:`~regularization_pipeline.core.shop.run_lock`) throughout;
        raises :class:`~regularization_pipeline.core.errors.BusyError`, having changed nothing,
        when another run holds it.
        """
        prefix = self.schema.mapping.table_prefix
        require_migrated(self.engine, prefix)
        require_capabilities(self.engine)
        for publisher in self.transactional.publishers:
            publisher.require_ready(self.engine)
        require_sound_shop(self.engine, self.schema)
        run_id = run_id or str(uuid.uuid4())
        exclusive = (
            run_lock.hold(self.engine, prefix, run_id) if self.exclusive else nullcontext(None)
        )
        with exclusive as lock_held:
            return self._run(run_id, options, progress, lock_held)

    def _run(
        self,
        run_id: str,
        options: RunOptions,
        progress: ProgressHook | None,
        lock_held: Callable[[], None] | None = None,
    ) -> RunSummary:
        started = time.monotonic()
        ctx = self.context(run_id, options, options.window(self.clock()))
        summary, head = self._survey(ctx, options)
        deadline = started + options.max_runtime_seconds if options.max_runtime_seconds else None
        pace = _Pace(options, summary, progress, deadline, lock_held, head)
        if self._batched(options):
            self._run_batches(ctx, pace)
        else:
            # Asked before every order, the lock's session would cost each order a round trip.
            pace.lock_held = getattr(lock_held, "between_orders", lock_held)
            self._run_per_order(ctx, pace)
        summary.elapsed_seconds = time.monotonic() - started
        return summary

    def _survey(self, ctx: RunContext, options: RunOptions) -> tuple[RunSummary, d.OrphanStats]:
        """The run's starting figures, and the first page of its queue; each inconsistency seen
        for the first time is audited."""
        report = open_report(ctx, options.bounds_history())
        with self.engine.connect() as conn:
            # The queue's first page rides on the count: one pass over the backlog for both.
            stats = d.orphan_stats(
                conn,
                self.schema,
                ctx.window,
                sample_size=_queue_page(options),
                attempts=self.tables.attempts,
            )
            held = held_orders(conn, self.schema, report)
        if not options.dry_run:
            audit_new_inconsistencies(ctx, report)
        log.info(
            "run %s: %d orphan(s) to fix, %d held order(s), limit %d",
            ctx.run_id,
            stats.count,
            sum(held.values()),
            options.limit,
        )
        summary = RunSummary(
            run_id=ctx.run_id,
            dry_run=options.dry_run,
            limit=options.limit,
            held=held,
            found=stats.count,
            aged_out=stats.aged_out,
            oldest_orphan_age_minutes=stats.oldest_age_minutes,
            inconsistent_by_kind=dict(report.counts),
        )
        return summary, stats

    def _batched(self, options: RunOptions) -> bool:
        if options.mode == "auto":
            return options.sleep == 0 and self.verifier is None
        if options.mode == "batched" and self.verifier is not None:
            # The provider is asked before any lock is taken, one order at a time.
            raise ConfigurationError(
                "mode 'batched' cannot be combined with provider verification; "
                "use per_order or auto"
            )
        return options.mode == "batched"

    def _run_per_order(self, ctx: RunContext, pace: _Pace) -> None:
        health = ProviderHealth(getattr(self.verifier, "outage_after", DEFAULT_OUTAGE_AFTER))
        # A bad token raises out of here and changes nothing, the errors before it included.
        with OrderConnection(self.engine) as shared:
            self._per_order(ctx, pace, health, shared)
        # Errors in a row fewer than an outage, at the end of the run: each order's own.
        for order_id, exc in health.take_streak():
            pace.record(attempts.record_failure(ctx, order_id, exc))
        self._pending_payments(ctx, pace)

    def _pending_payments(self, ctx: RunContext, pace: _Pace) -> None:
        """Payments the shop still has as pending, asked at the provider (opt-in)."""
        settings = getattr(getattr(self.verifier, "settings", None), "pending_payments", None)
        if settings is None or pace.summary.stopped_by_provider or not pace.has_room():
            return
        room = pace.options.limit - pace.summary.processed
        for order_id, tx_id in pending_payments.candidates(ctx, list(settings.statuses), room):
            if not pace.has_room():
                return
            try:
                outcome = pending_payments.settle(ctx, self.verifier, order_id, tx_id, settings)
            except ProviderError as exc:
                pace.record(pending_payments.provider_error_outcome(ctx, order_id, exc))
                return  # asked again next run; the orphans came first
            pace.record(outcome)

    def _queue(self, ctx: RunContext, pace: _Pace) -> Iterator[list]:
        """The run's orders, oldest payment first, the survey's sample as the first page."""
        return d.fixable_pages(
            self.engine,
            self.schema,
            ctx.window,
            _queue_page(pace.options),
            attempts=self.tables.attempts,
            head=pace.head,
        )

    def _per_order(
        self, ctx: RunContext, pace: _Pace, health: ProviderHealth, shared: OrderConnection
    ) -> None:
        rest_before_next = False
        for page in self._queue(ctx, pace):
            for order_id in attempts.without_quarantined(ctx, page):
                if not pace.has_room(pending=len(health.streak)):
                    return
                if rest_before_next and pace.options.sleep:
                    self.sleeper(pace.options.sleep)
                outcome = self.one.regularize(ctx, order_id, health, shared)
                rest_before_next = outcome is None or outcome.acted
                if outcome is None:  # a provider error: this order's, or an outage?
                    if health.outage:
                        # Every further order would wait out the same timeouts: stop, and
                        # leave these for the next run without blaming them.
                        for failed_id, exc in health.take_streak():
                            pace.record(attempts.left_for_next_run(ctx, failed_id, exc))
                        pace.summary.stopped_by_provider = True
                        return
                    continue
                if health.streak and health.answered_last:
                    # The provider answered this order: the errors before it were their orders'.
                    for failed_id, exc in health.take_streak():
                        pace.record(attempts.record_failure(ctx, failed_id, exc))
                pace.record(outcome)

    def _run_batches(self, ctx: RunContext, pace: _Pace) -> None:
        options = pace.options
        for page in self._queue(ctx, pace):
            while page:
                if not pace.has_room():
                    return
                size = min(options.batch_size, options.limit - pace.summary.processed)
                ids, page = page[:size], page[size:]
                for outcome in self._batch(ctx, pace, ids):
                    pace.record(outcome)
                if options.sleep and pace.summary.processed < options.limit:
                    self.sleeper(options.sleep)

    def _batch(self, ctx: RunContext, pace: _Pace, ids: list) -> list[OrderOutcome]:
        """The outcomes of one batch; a batch that fails rolls back whole, and its orders are
        then decided one by one."""
        try:
            with self.engine.begin() as conn:
                outcomes = batching.decide_batch(ctx, conn, ids)
            _log_batch(ctx.run_id, outcomes)
            return outcomes
        except Exception as exc:
            log.warning(
                "run %s: batch from order %s failed (%s): falling back to one order at a time",
                ctx.run_id,
                ids[0],
                describe_error(exc),
            )
        outcomes = []
        for order_id in attempts.without_quarantined(ctx, ids):
            if pace.lock_held is not None:
                pace.lock_held()
            outcomes.append(self.one.regularize(ctx, order_id))
        return outcomes

    # --- one order -----------------------------------------------------------------------

    def regularize_one(
        self, order_id: Any, run_id: str, options: RunOptions, window: d.ScanWindow | None = None
    ) -> OrderOutcome:
        """Decide one order in its own transaction; a failure is counted, never raised."""
        ctx = self.context(run_id, options, window or options.window(self.clock()))
        return self.one.regularize(ctx, order_id)

    # --- operator tools ------------------------------------------------------------------

    def release(self, order_id: Any, run_id: str = "operator") -> None:
        """Lift an order's quarantine and reset its failure count."""
        options = RunOptions()
        attempts.release(self.context(run_id, options, options.window(self.clock())), order_id)


def _queue_page(options: RunOptions) -> int:
    """How many orders a run reads from its queue at a time: what it may take, within bounds."""
    return min(QUEUE_PAGE, max(options.limit, options.batch_size))


def _log_batch(run_id: str, outcomes: list[OrderOutcome]) -> None:
    # One line per batch: where python_logs manages this logger, every line is a write to
    # Dagster's event log, and a line per order outweighs the orders.
    for outcome in outcomes:
        log.debug("order %s: %s (%s)", outcome.order_id, outcome.action, outcome.reason)
    if outcomes:
        acted: dict[str, int] = {}
        for outcome in outcomes:
            acted[outcome.action] = acted.get(outcome.action, 0) + 1
        log.info(
            "run %s: batch of %d up to order %s: %s",
            run_id,
            len(outcomes),
            outcomes[-1].order_id,
            ", ".join(f"{n} {action}" for action, n in sorted(acted.items())),
        )
