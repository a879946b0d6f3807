"""The regularization of orphaned orders: a run, and one order at a time.

A run surveys the shop (orphans, inconsistencies), then decides up to ``limit``
orders, either one transaction per order (the original's pace, ``sleep``
seconds apart) or ``batch_size`` orders per transaction
(:mod:`~regularization_pipeline.core.decisions.batching`). Each order's decision:

1. lock the order row (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL and
   MariaDB/MySQL; on SQLite the transaction began ``IMMEDIATE`` and holds the
   database's write lock), and re-read it and its payments under the lock;
2. verify (:func:`regularization_pipeline.core.decisions.verification.verify`, pure);
3. write it (:func:`regularization_pipeline.core.decisions.writes.write_decisions`): the
   compare-and-set flip, the outbox row, the attempts and audit rows; commit.

A late webhook that completed the order first makes step 2 or 3 find it
completed: the order is skipped and no event is written. Any exception rolls
the whole order back; the failure is then counted
(:mod:`~regularization_pipeline.core.decisions.attempts`) and, after ``max_attempts``,
the order is quarantined.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from regularization_pipeline.core import verdicts
from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.decisions import attempts, batching, pending_payments
from regularization_pipeline.core.decisions.audit import Decision
from regularization_pipeline.core.decisions.context import (
    LOCKED_ELSEWHERE,
    FaultHook,
    OrderOutcome,
    RunContext,
    no_fault,
)
from regularization_pipeline.core.decisions.orders import OrderStatements, same_order_id
from regularization_pipeline.core.decisions.provider_health import (
    DEFAULT_OUTAGE_AFTER,
    ProviderHealth,
)
from regularization_pipeline.core.decisions.tracker import audit_new_inconsistencies, open_report
from regularization_pipeline.core.decisions.verification import (
    Verdict,
    apply_provider_answer,
    provider_hold,
    verify,
)
from regularization_pipeline.core.decisions.writes import write_decisions
from regularization_pipeline.core.delivery.laravel_queue import TransactionalDelivery
from regularization_pipeline.core.delivery.publishers import expand_publishers
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.detection.held import held_orders
from regularization_pipeline.core.detection.shop_rules import require_sound_shop
from regularization_pipeline.core.errors import ConfigurationError, describe_error, is_deadlock
from regularization_pipeline.core.provider.answers import (
    HoldReason,
    PaymentVerifier,
    ProviderAnswer,
    ProviderError,
    ProviderRejectedError,
    ProviderUnavailableError,
)
from regularization_pipeline.core.run import ProgressHook, RunOptions, RunSummary
from regularization_pipeline.core.shop import run_lock
from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.core.shop.binding import AppSchema
from regularization_pipeline.core.shop.engine import require_capabilities
from regularization_pipeline.core.shop.migrations import require_migrated

__all__ = ["OrderOutcome", "Regularizer", "RunOptions", "RunSummary"]

log = logging.getLogger("regularization_pipeline.regularizer")

DEADLOCK_RETRIES = 2
DEADLOCK_BACKOFF_SECONDS = 0.05
ASKED_ABOUT_ANOTHER = "transaction changed since the provider was asked: left for the next run"

# (transaction id, what the provider said about it), asked before the order's lock is taken.
ProviderWord = tuple[Any, ProviderAnswer]


@dataclass
class _Pace:
    """When a run stops taking orders, and what it does after each one."""

    options: RunOptions
    summary: RunSummary
    progress: ProgressHook | None
    deadline: float | None
    # Raises RunLockLostError when the shop's run lock is gone; None when the run holds none.
    lock_held: Callable[[], None] | None = None

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
        summary = self._survey(ctx, options)
        deadline = started + options.max_runtime_seconds if options.max_runtime_seconds else None
        pace = _Pace(options, summary, progress, deadline, lock_held)
        if self._batched(options):
            self._run_batches(ctx, pace)
        else:
            self._run_per_order(ctx, pace)
        summary.elapsed_seconds = time.monotonic() - started
        return summary

    def _survey(self, ctx: RunContext, options: RunOptions) -> RunSummary:
        """The run's starting figures; each inconsistency seen for the first time is audited."""
        report = open_report(ctx, options.bounds_history())
        with self.engine.connect() as conn:
            stats = d.orphan_stats(
                conn, self.schema, ctx.window, sample_size=0, attempts=self.tables.attempts
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
        return RunSummary(
            run_id=ctx.run_id,
            dry_run=options.dry_run,
            limit=options.limit,
            held=held,
            found=stats.count,
            aged_out=stats.aged_out,
            oldest_orphan_age_minutes=stats.oldest_age_minutes,
            inconsistent_by_kind=dict(report.counts),
        )

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
        self._per_order(ctx, pace, health)
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

    def _per_order(self, ctx: RunContext, pace: _Pace, health: ProviderHealth) -> None:
        rest_before_next = False
        for page in d.candidate_pages(
            self.engine, self.schema, ctx.window, pace.options.batch_size
        ):
            for order_id in attempts.without_quarantined(ctx, page):
                if not pace.has_room(pending=len(health.streak)):
                    return
                if rest_before_next and pace.options.sleep:
                    self.sleeper(pace.options.sleep)
                outcome = self._regularize(ctx, order_id, health)
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
        options, last = pace.options, None
        slice_size = options.batch_size * batching.CLAIM_SCAN_FACTOR
        while pace.has_room():
            size = min(options.batch_size, options.limit - pace.summary.processed)
            try:
                with self.engine.begin() as conn:
                    outcomes, scanned_to = batching.decide_batch(ctx, conn, last, size, slice_size)
                _log_batch(ctx.run_id, outcomes)
            except Exception as exc:  # the batch rolled back whole: decide its orders one by one
                log.warning(
                    "run %s: batch after order %s failed (%s): falling back to one order at a time",
                    ctx.run_id,
                    last,
                    describe_error(exc),
                )
                page = next(
                    d.candidate_pages(self.engine, self.schema, ctx.window, size, after=last), []
                )
                outcomes = []
                for order_id in attempts.without_quarantined(ctx, page):
                    if pace.lock_held is not None:
                        pace.lock_held()
                    outcomes.append(self._regularize(ctx, order_id))
                scanned_to = page[-1] if page else None
            if scanned_to is None:  # no pending order left to look at
                return
            last = scanned_to
            slice_size = batching.next_slice_size(size, slice_size, len(outcomes))
            for outcome in outcomes:
                pace.record(outcome)
            if options.sleep and pace.summary.processed < options.limit:
                self.sleeper(options.sleep)

    # --- one order -----------------------------------------------------------------------

    def regularize_one(
        self, order_id: Any, run_id: str, options: RunOptions, window: d.ScanWindow | None = None
    ) -> OrderOutcome:
        """Decide one order in its own transaction; a failure is counted, never raised."""
        ctx = self.context(run_id, options, window or options.window(self.clock()))
        return self._regularize(ctx, order_id)

    def _regularize(
        self, ctx: RunContext, order_id: Any, health: ProviderHealth | None = None
    ) -> OrderOutcome | None:
        """The order's outcome; None when ``health`` is given and the provider could not answer
        (the run decides, with the next orders, whether that was this order's failure)."""
        try:
            # Outside any transaction: a test can play the late webhook here, between the scan and the claim.
            self.fault("before_claim", order_id)
            if health is not None:
                health.answered_last = False
            answer = self._ask_provider(ctx, order_id, health) if self.verifier else None
            outcome = self._decide_retrying_deadlocks(ctx, order_id, answer)
        except ProviderRejectedError as exc:
            if health is None or not health.answered:
                raise  # a bad token or URL: every order would fail the same way, so the run stops
            # Our credentials work (the provider answered this run): refused about this one.
            words = "provider refused the request about this transaction, having answered others"
            hold = provider_hold(
                Verdict(verdicts.SKIPPED, words), HoldReason.REQUEST_REFUSED, words
            )
            log.info("order %s: %s", order_id, describe_error(exc))
            return attempts.hold_for_provider(ctx, order_id, hold)
        except ProviderUnavailableError as exc:
            if health is None:
                return attempts.left_for_next_run(ctx, order_id, exc)
            log.warning("order %s: provider error: %s", order_id, describe_error(exc))
            health.note_error(order_id, exc)
            return None
        except sa.exc.DataError as exc:
            if self._is_order_key(order_id):
                return attempts.record_failure(ctx, order_id, exc)
            # Not even a value of the orders' key ("abc" for an integer id, PostgreSQL): no such
            # order, as SQLite and MariaDB answer; not a failure to count, nor to quarantine.
            with self.engine.begin() as conn:
                not_found = Decision(order_id, Verdict(verdicts.SKIPPED, "order not found"))
                return write_decisions(ctx, conn, [not_found])[0]
        except Exception as exc:  # one bad order never stops the run
            return attempts.record_failure(ctx, order_id, exc)
        if outcome.reason != LOCKED_ELSEWHERE:
            log.info("order %s: %s (%s)", order_id, outcome.action, outcome.reason)
        return outcome

    def _is_order_key(self, order_id: Any) -> bool:
        """Whether the database takes ``order_id`` as a value of the orders' key at all."""
        try:
            with self.engine.connect() as conn:
                conn.execute(self.statements.exists, {"p_order": order_id})
        except sa.exc.DataError:
            return False
        return True

    def _decide_retrying_deadlocks(
        self, ctx: RunContext, order_id: Any, answer: ProviderWord | None
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
                    return self._decide(ctx, conn, order_id, answer)
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

    def _decide(
        self, ctx: RunContext, conn: sa.Connection, order_id: Any, answer: ProviderWord | None
    ) -> OrderOutcome:
        """Lock, re-read and verify one order, then write the decision, in ``conn``'s transaction."""
        order = self.statements.load_order(conn, order_id, lock=True)
        if order is None:
            found = conn.execute(self.statements.exists, {"p_order": order_id}).first()
            if found is not None and same_order_id(found[0], order_id):
                return OrderOutcome(order_id, verdicts.SKIPPED, LOCKED_ELSEWHERE)
            not_found = Decision(order_id, Verdict(verdicts.SKIPPED, "order not found"))
            return write_decisions(ctx, conn, [not_found])[0]
        self.fault("after_lock", order_id)
        payments = self.statements.payments(conn, order_id)
        verdict = verify(order, payments, self.schema.statuses, ctx.window)
        if verdict.action == verdicts.REGULARIZED and self.verifier is not None:
            if answer is None or answer[0] != verdict.transaction.id:
                verdict = Verdict(verdicts.SKIPPED, ASKED_ABOUT_ANOTHER)
            else:
                verdict = apply_provider_answer(verdict, answer[1], order)
        return write_decisions(ctx, conn, [Decision(order_id, verdict, order)])[0]

    def _ask_provider(
        self, ctx: RunContext, order_id: Any, health: ProviderHealth | None = None
    ) -> ProviderWord | None:
        """Ask the provider before taking the row lock, so no lock waits on the network.

        Returns (transaction id, answer) when the database alone would
        regularize the order; the locked decision then checks that the same
        transaction is still the completed one.
        """
        with self.engine.connect() as conn:
            order = self.statements.load_order(conn, order_id, lock=False)
            if order is None:
                return None
            payments = self.statements.payments(conn, order_id)
        verdict = verify(order, payments, self.schema.statuses, ctx.window)
        if verdict.action != verdicts.REGULARIZED:
            return None
        answer = self.verifier.check(order, verdict.transaction)
        if health is not None:
            health.note_answer()
        return verdict.transaction.id, answer

    # --- operator tools ------------------------------------------------------------------

    def release(self, order_id: Any, run_id: str = "operator") -> None:
        """Lift an order's quarantine and reset its failure count."""
        options = RunOptions()
        attempts.release(self.context(run_id, options, options.window(self.clock())), order_id)


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
